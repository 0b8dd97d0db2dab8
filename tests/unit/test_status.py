from __future__ import annotations

import json
from pathlib import Path

from guestfail.cli import status
from guestfail.core import records as state
from guestfail.core.config import parse
from guestfail.core.decision import Health
from guestfail.core.errors import Exit
from guestfail.system import files
from guestfail.system.observe import assemble

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
    assert status.exit_code(doc) == Exit.OK
    assert doc["unpaired"] == [{"link": "enp4s0", "role": "standby", "reason": "no primary yet"}]


def test_live_view_with_the_vf_down_is_degraded(tmp_path: Path) -> None:
    doc = status.gather(cfg(tmp_path), paired_snapshot(tmp_path, "vf-down"))
    (p,) = doc["pairs"]
    assert (p["state"], p["phase"], p["active"]) == ("degraded", "on-standby", "enp1s0nsby")
    assert status.exit_code(doc) == Exit.DEGRADED
    text = status.render(doc)
    assert "enp1s0  degraded" in text
    assert "health: degraded; source: live view only" in text


def test_state_file_and_disagreements(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    snap = paired_snapshot(tmp_path, "vf-down")
    # the daemon last wrote that the VF was active: the kernel says otherwise
    live = status.live_document(c, paired_snapshot(tmp_path))
    live["daemon"] = {"running": True, "pid": 999999999}
    live["pairs"][0]["last_switch"] = {
        "time": "2026-11-25T10:00:00Z.000",
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
    text = status.render(doc)
    assert "enp1s0nsby->enp1s0npf (primary has carrier, 1.5 ms)" in text
    assert "disagreements (daemon vs kernel):" in text
    assert "daemon not running" in text


def test_failed_beats_degraded_and_refusals_degrade() -> None:
    assert state.overall([{"state": "failed"}, {"state": "degraded"}], []) == Health.FAILED.value
    assert state.overall([{"state": "healthy"}], [{"links": ["x"], "reason": "y"}]) == "degraded"
    assert state.overall([], []) == "healthy"
    assert status.exit_code({"health": "failed"}) == Exit.FAILED


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
