from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestfail.cli import status
from guestfail.core import records as state
from guestfail.core.config import parse
from guestfail.core.decision import Health
from guestfail.core.errors import Exit, NotFound
from guestfail.system import files
from guestfail.system.observe import assemble
from guestfail.system.sysfs import Sysfs

from .test_discover import guest_sys
from .test_netlink_parse import load_dump


def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse(f'[agent]\nstate_dir = "{tmp_path / "run"}"')


def paired_snapshot(tmp_path: Path, dump: str = "paired"):  # type: ignore[no-untyped-def]
    return assemble(load_dump(dump), guest_sys(tmp_path / f"sys-{dump}"))


def test_live_view_of_a_healthy_pair(tmp_path: Path) -> None:
    doc = status.gather(cfg(tmp_path), paired_snapshot(tmp_path))
    assert doc["source"] == "live"
    (p,) = doc["pairs"]
    assert (p["master"], p["state"], p["phase"], p["active"], p["standby"], p["primary"], p["rule"]) == (
        "enp1s0",
        "healthy",
        "on-primary",
        "enp1s0npf",
        "enp1s0nsby",
        "enp1s0npf",
        "mac",
    )
    assert doc["health"] == "healthy"
    # no daemon: the live view says healthy, and the exit code says not running
    assert status.exit_code(status.Status.from_document(doc)) == Exit.NOT_RUNNING
    assert doc["unpaired"] == [{"link": "enp4s0", "role": "standby", "reason": "no primary yet"}]


def test_live_view_with_the_vf_down_is_degraded(tmp_path: Path) -> None:
    doc = status.gather(cfg(tmp_path), paired_snapshot(tmp_path, "vf-down"))
    (p,) = doc["pairs"]
    assert (p["state"], p["phase"], p["active"]) == ("degraded", "on-standby", "enp1s0nsby")
    running = dict(doc, daemon={"running": True})
    assert status.exit_code(status.Status.from_document(running)) == Exit.DEGRADED
    text = status.render(status.Status.from_document(doc))
    assert "enp1s0  degraded" in text
    assert "health: degraded; source: live view only" in text


def test_state_file_and_disagreements(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    snap = paired_snapshot(tmp_path, "vf-down")
    # the daemon last wrote that the VF was active: the kernel says otherwise
    live = status.live_document(c, paired_snapshot(tmp_path))
    live["daemon"] = {"running": True, "pid": 999999999}
    live["pairs"][0]["last_switch"] = {
        "time": "2026-11-25T10:00:00.000Z",
        "from": "enp1s0nsby",
        "to": "enp1s0npf",
        "reason": "primary has carrier",
        "latency_ms": 1.5,
        "by": "guestfail",
    }
    files.write_atomic(Path(c.state_dir) / state.STATE_FILE, live)
    doc = status.gather(c, snap)
    assert doc["source"] == "state-file"
    assert doc["daemon"]["running"] is False  # no such process
    assert doc["disagreements"] == ["enp1s0: active is enp1s0npf in the state-file, enp1s0nsby in the kernel"]
    st = status.Status.from_document(doc)
    text = status.render(st)
    assert "enp1s0nsby->enp1s0npf (primary has carrier, 1.5 ms)" in text
    # the date and time of the switch, in the guest's time zone
    assert st.pairs[0].last_switch is not None
    assert st.pairs[0].last_switch.local_time in text and "2026-11-25 " in text
    assert "disagreements (daemon vs kernel):" in text
    assert "daemon not running" in text


def test_failed_beats_degraded_and_refusals_degrade() -> None:
    assert state.overall([{"state": "failed"}, {"state": "degraded"}], []) == Health.FAILED.value
    assert state.overall([{"state": "healthy"}], [{"links": ["x"], "reason": "y"}]) == "degraded"
    assert state.overall([], []) == "healthy"
    running = {"health": "failed", "source": "daemon", "daemon": {"running": True}}
    assert status.exit_code(status.Status.from_document(running)) == Exit.FAILED


def test_unreadable_or_foreign_state_files_are_ignored(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    p.write_text("{not json")
    assert files.read(p) is None
    p.write_text(json.dumps({"schema": 99}))
    assert files.read(p) is None
    assert files.read(tmp_path / "absent.json") is None


def test_json_schema_fields(tmp_path: Path) -> None:
    doc = status.gather(cfg(tmp_path), paired_snapshot(tmp_path))
    assert set(doc) >= {
        "schema",
        "source",
        "generated",
        "daemon",
        "health",
        "pairs",
        "refusals",
        "unpaired",
        "kernel_managed",
        "ignored",
        "disagreements",
    }
    assert set(doc["pairs"][0]) >= {
        "key",
        "label",
        "kind",
        "master",
        "state",
        "phase",
        "why",
        "active",
        "standby",
        "primary",
        "rule",
        "reason",
        "drained",
        "error",
        "switches",
        "last_switch",
        "history",
    }
    json.dumps(doc)


def test_the_daemon_not_running_is_said_and_exits_8(tmp_path: Path) -> None:
    """Issue 18: status said healthy, exit 0, with the daemon stopped."""
    c = cfg(tmp_path)
    snap = paired_snapshot(tmp_path)
    live = status.live_document(c, snap)
    live["daemon"] = {"running": True, "pid": 999999999}  # a pid that is not guestfail's
    files.write_atomic(Path(c.state_dir) / state.STATE_FILE, live)
    st = status.Status.from_document(status.gather(c, snap))
    assert st.health.value == "healthy" and not st.running
    assert status.exit_code(st) == Exit.NOT_RUNNING and int(Exit.NOT_RUNNING) == 8
    assert "the daemon is not running" in status.render(st)


def test_one_pair_in_detail(tmp_path: Path) -> None:
    """`status PAIR`: each member's carrier, speed, driver, PCI address,
    slot, permanent MAC and link failures, and the switches with dates."""
    snap = paired_snapshot(tmp_path)
    sysroot = tmp_path / "sys-paired" / "class" / "net"
    (sysroot / "enp1s0npf" / "speed").write_text("10000\n")
    (sysroot / "enp1s0npf" / "bonding_slave").mkdir()
    (sysroot / "enp1s0npf" / "bonding_slave" / "link_failure_count").write_text("3\n")
    (sysroot / "enp1s0nsby" / "speed").write_text("-1\n")  # virtio: no speed
    doc = status.gather(cfg(tmp_path), snap)
    doc["pairs"][0]["history"] = [
        {"time": "2026-11-27T17:53:38.923Z", "from": "enp1s0nsby", "to": "enp1s0npf",
         "reason": "enp1s0npf joined", "latency_ms": 143.88, "by": "kernel"}
    ]  # fmt: skip
    st = status.Status.from_document(doc)
    for name in ("enp1s0", "enp1s0npf", "pci-0000:01:00.0"):
        assert st.pair(name).master == "enp1s0"
    with pytest.raises(NotFound):
        st.pair("")
    pair = st.pair("enp1s0")
    ms = status.members(pair, snap, Sysfs(tmp_path / "sys-paired").member_counters)
    assert [(m.name, m.role, m.active, m.carrier, m.speed_mbps, m.link_failures) for m in ms] == [
        ("enp1s0nsby", "standby", False, True, None, None),
        ("enp1s0npf", "primary", True, True, 10000, 3),
    ]
    assert (ms[1].driver, ms[1].pci, ms[1].slot, ms[1].perm_mac) == (
        "e1000",
        "0000:02:00.0",
        "5001",
        "02:00:00:00:00:11",
    )
    text = status.render_pair(pair, ms)
    assert "enp1s0npf *" in text and "10000 Mb/s" in text and "5001" in text
    assert "enp1s0nsby->enp1s0npf (enp1s0npf joined, 143.9 ms) by kernel" in text
    assert json.loads(json.dumps([m.to_json() for m in ms]))[1]["link_failures"] == 3
