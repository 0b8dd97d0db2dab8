"""The node_exporter textfile: rendered from real status documents
(guestfail.state), written to a file, and read back with prometheus_client's
own parser, as node_exporter would."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from guestfail.core.decision import Facts, decide
from guestfail.core.records import PairRecord, Switch, document
from guestfail.system import metrics
from tests.unit.test_daemon import daemon, event, paired

T0 = 1_795_000_000.0  # a wall-clock time in 2026


def record(active: int = 3) -> PairRecord:
    rec = PairRecord("pci-0000:01:00.0", master=5, master_name="ens4", standby=2, standby_name="ens4nsby")
    rec.primary, rec.primary_name = 3, "ens4npf"
    rec.primary_master = rec.master
    rec.standby_carrier = True
    rec.primary_carrier = active == 3
    rec.active = active
    rec.rule = "mac"
    rec.decision = decide(Facts(2, True, 3, True, active == 3, False, active))
    return rec


def switch(rec: PairRecord, to: int, reason: str, latency_ms: Optional[float], by: str = "guestfail") -> None:
    """What the daemon's _record() does to a pair."""
    rec.history.append(
        Switch(T0 + rec.switches, rec.name_of(rec.active), rec.name_of(to), reason, latency_ms, by)
    )
    rec.switches += 1
    rec.active = to
    rec.primary_carrier = to == 3
    rec.decision = decide(Facts(2, True, 3, True, to == 3, False, to))


def doc_of(*recs: PairRecord, refusals: int = 0, resyncs: int = 0) -> dict[str, Any]:
    sections = {
        "refusals": [{"links": ["ens9"], "reason": "two standbys"}] * refusals,
        "unpaired": [],
        "kernel_managed": [],
        "ignored": [],
    }
    daemon = {
        "running": True,
        "pid": 1,
        "version": "0.1.0",
        "backend": "bond",
        "config": "(defaults)",
        "started": "2026-11-18T11:06:40Z",
        "reconciles": 4,
        "resyncs": resyncs,
    }
    return document(list(recs), sections, daemon, "daemon")


def read(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the file, by name and labels, through prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: dict[Any, float], name: str, **labels: str) -> Optional[float]:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_a_pair_its_switches_and_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "guestfail.prom"
    writer = metrics.Textfile()
    rec = record()
    assert writer.write(str(path), doc_of(rec, refusals=1, resyncs=2))
    m = read(path)
    assert sample(m, "guestfail_up") == 1
    assert sample(m, "guestfail_build_info", version="0.1.0", backend="bond") == 1
    assert sample(m, "guestfail_start_time_seconds") == 1795000000.0  # 2026-11-18T11:06:40Z
    assert sample(m, "guestfail_resyncs_total") == 2
    assert sample(m, "guestfail_reconciles_total") == 4
    assert sample(m, "guestfail_refusals") == 1
    assert sample(m, "guestfail_health", state="degraded") == 1  # a refusal degrades
    assert sample(m, "guestfail_pair_health", master="ens4", state="healthy") == 1
    assert sample(m, "guestfail_pair_health", master="ens4", state="degraded") == 0
    assert sample(m, "guestfail_pair_active", master="ens4", role="primary") == 1
    assert sample(m, "guestfail_pair_active", master="ens4", role="standby") == 0
    assert sample(m, "guestfail_pair_switch_latency_seconds_count", master="ens4") == 0
    assert sample(m, "guestfail_pair_last_switch_latency_seconds", master="ens4") is None

    # the VF loses carrier: guestfail switches in 12 ms
    switch(rec, 2, "ens4npf lost carrier", 12.0)
    writer.write(str(path), doc_of(rec))
    writer.write(str(path), doc_of(rec))  # the same document again counts nothing
    m = read(path)
    assert sample(m, "guestfail_pair_health", master="ens4", state="degraded") == 1
    assert sample(m, "guestfail_pair_active", master="ens4", role="standby") == 1
    assert (
        sample(
            m, "guestfail_pair_switches_total", master="ens4", reason="primary lost carrier", by="guestfail"
        )
        == 1
    )
    assert sample(m, "guestfail_pair_last_switch_latency_seconds", master="ens4") == 0.012
    assert sample(m, "guestfail_pair_last_switch_timestamp_seconds", master="ens4") == T0
    assert sample(m, "guestfail_pair_switch_latency_seconds_bucket", master="ens4", le="0.01") == 0
    assert sample(m, "guestfail_pair_switch_latency_seconds_bucket", master="ens4", le="0.025") == 1
    assert sample(m, "guestfail_pair_switch_latency_seconds_bucket", master="ens4", le="+Inf") == 1
    assert sample(m, "guestfail_pair_switch_latency_seconds_sum", master="ens4") == 0.012

    # back to the VF by the bond itself (latency unknown), then a planned unplug
    switch(rec, 3, "the bond reselected", None, by="kernel")
    switch(rec, 2, "prepare-unplug", 3.0)
    writer.write(str(path), doc_of(rec))
    m = read(path)
    assert (
        sample(m, "guestfail_pair_switches_total", master="ens4", reason="the bond reselected", by="kernel")
        == 1
    )
    assert (
        sample(m, "guestfail_pair_switches_total", master="ens4", reason="prepare-unplug", by="guestfail")
        == 1
    )
    assert (
        sample(m, "guestfail_pair_switch_latency_seconds_count", master="ens4") == 2
    )  # the unknown one is not
    assert sample(m, "guestfail_pair_switch_latency_seconds_bucket", master="ens4", le="0.005") == 1


def test_switches_that_fell_out_of_the_history_are_counted_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "guestfail.prom"
    writer = metrics.Textfile()
    rec = record()
    writer.write(str(path), doc_of(rec))
    for i in range(40):  # more than the 32 a document carries, between two documents
        switch(
            rec, 2 if i % 2 == 0 else 3, "ens4npf lost carrier" if i % 2 == 0 else "ens4npf got carrier", 1.0
        )
    writer.write(str(path), doc_of(rec))
    m = read(path)
    counted = {labels: v for (name, labels), v in m.items() if name == "guestfail_pair_switches_total"}
    assert sum(counted.values()) == 40
    assert sample(m, "guestfail_pair_switches_total", master="ens4", reason="unknown", by="unknown") == 8
    assert (
        sample(
            m, "guestfail_pair_switches_total", master="ens4", reason="primary got carrier", by="guestfail"
        )
        == 16
    )


def test_a_pair_built_anew_starts_its_counts_again_and_a_released_one_goes(tmp_path: Path) -> None:
    path = tmp_path / "guestfail.prom"
    writer = metrics.Textfile()
    rec = record()
    switch(rec, 2, "ens4npf removed", 5.0)
    switch(rec, 3, "ens4npf joined", 900.0, by="kernel")
    writer.write(str(path), doc_of(rec))
    assert (
        sample(
            read(path), "guestfail_pair_switches_total", master="ens4", reason="primary joined", by="kernel"
        )
        == 1
    )
    fresh = record()
    switch(fresh, 2, "ens4nsby got carrier", 1.0)  # a reason naming the standby
    writer.write(str(path), doc_of(fresh))
    m = read(path)
    assert (
        sample(m, "guestfail_pair_switches_total", master="ens4", reason="primary joined", by="kernel")
        is None
    )
    assert (
        sample(
            m, "guestfail_pair_switches_total", master="ens4", reason="standby got carrier", by="guestfail"
        )
        == 1
    )
    writer.write(str(path), doc_of())
    m = read(path)
    assert not [k for k in m if k[0].startswith("guestfail_pair_")]
    assert sample(m, "guestfail_health", state="healthy") == 1


def test_written_atomically_and_nothing_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "guestfail.prom"
    writer = metrics.Textfile()
    old_umask = os.umask(0o022)  # the unit's UMask
    try:
        writer.write(str(path), doc_of(record()))
        first = os.stat(path).st_ino
        writer.write(str(path), doc_of(record(), refusals=3))
    finally:
        os.umask(old_umask)
    assert os.stat(path).st_ino != first  # a new file renamed over the old one, never rewritten in place
    assert os.listdir(tmp_path) == ["guestfail.prom"]
    assert path.stat().st_mode & 0o777 == 0o644  # node_exporter, another user, reads it
    assert sample(read(path), "guestfail_refusals") == 3


def test_a_stopped_daemon_says_so(tmp_path: Path) -> None:
    path = tmp_path / "guestfail.prom"
    metrics.Textfile().write(str(path), doc_of(record()), up=False)
    assert sample(read(path), "guestfail_up") == 0


def test_unwritable_is_logged_once_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing-dir" / "guestfail.prom"
    writer = metrics.Textfile()
    with caplog.at_level(logging.WARNING, logger="guestfail.system.metrics"):
        assert not writer.write(str(path), doc_of(record()))
        assert not writer.write(str(path), doc_of(record()))
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot write {path}: [Errno 2] No such file or directory: '{path}.{os.getpid()}.{_thread_id()}'"
    ]
    assert os.listdir(tmp_path) == []


def _thread_id() -> int:
    import threading

    return threading.current_thread().ident or 0


def test_without_prometheus_client_the_daemon_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # not installed
    writer = metrics.Textfile()
    with caplog.at_level(logging.ERROR, logger="guestfail.system.metrics"):
        assert not writer.write(str(tmp_path / "guestfail.prom"), doc_of(record()))
        assert not writer.write(str(tmp_path / "guestfail.prom"), doc_of(record()))
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "prometheus_client is not installed (python3-prometheus-client)" in msg
    assert os.listdir(tmp_path) == []


def test_no_textfile_configured_writes_nothing(tmp_path: Path) -> None:
    assert not metrics.Textfile().write("", doc_of(record()))


def test_the_daemon_writes_it_with_its_state_file(tmp_path: Path) -> None:
    """The daemon's hook, on the in-memory kernel: a switch writes the state
    file and the metrics."""
    w = paired(tmp_path)
    prom = tmp_path / "guestfail.prom"

    async def go() -> None:
        async with daemon(w, agent=f'[metrics]\ntextfile = "{prom}"\n') as d:
            w.k.set_carrier(w.link("ens11npf").ifindex, False)
            d.on_link_event(event(w, "ens11npf"))
            await d.switcher.settle()

    asyncio.run(go())
    m = read(prom)
    assert sample(m, "guestfail_pair_active", master="ens11", role="standby") == 1
    assert (
        sample(
            m, "guestfail_pair_switches_total", master="ens11", reason="primary lost carrier", by="guestfail"
        )
        == 1
    )


def test_the_attention_buttons_slot_is_not_a_label_value() -> None:
    from guestfail.system.metrics import reason_label

    pair = {"standby": "ens4nsby"}
    assert reason_label("attention button on slot 5001", pair) == "attention button"
    assert reason_label("attention button on slot 5002", pair) == "attention button"
    cancelled = "attention button on slot 5001 pressed again: removal cancelled"
    assert reason_label(cancelled, pair) == "attention button cancelled"
    assert reason_label("prepare-unplug", pair) == "prepare-unplug"
