"""The lab itself: nothing is left behind, whatever the test did."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import topology
from lab.vm import Lab, LabError


def processes_mentioning(text: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            out.append(int(pid))
    return out


def test_a_failing_test_leaves_no_qemu_socket_or_directory() -> None:
    lab = Lab(topology.basic(with_other=False), name="teardown")
    with pytest.raises(RuntimeError, match="the test failed"), lab:
        assert processes_mentioning(str(lab.workdir))  # QEMU runs
        assert (lab.workdir / "qmp.sock").exists()
        raise RuntimeError("the test failed")
    assert not lab.workdir.exists()
    assert processes_mentioning(str(lab.workdir)) == []


def test_a_boot_that_times_out_leaves_nothing_either() -> None:
    lab = Lab(topology.basic(with_other=False), name="timeout", boot_timeout=2)
    with pytest.raises(LabError, match="guest not ready after"):
        lab.start()
    assert not lab.workdir.exists()
    assert processes_mentioning(str(lab.workdir)) == []
