from __future__ import annotations

import socket
from pathlib import Path

import pytest

from guestfail.system.notify import notify


def test_notify_sends_and_never_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1")
        assert srv.recv(100) == b"READY=1"
        # nobody reads: the buffer fills up and notify drops, it does not hang
        results = [notify("STATUS=" + "x" * 200) for _ in range(200)]
        assert results[0] is True and results[-1] is False


def test_no_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
