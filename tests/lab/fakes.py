"""Fakes of the lab's boundary for its own tests: QEMU's end of a path."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Callable, Optional

from lab import frames as f
from lab.frames import Parsed
from lab.peer import Peer


class FakeNic:
    """QEMU's end of one path: sends frames to the peer's port, collects what the peer sends."""

    def __init__(self, peer: Peer, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.peer_port = peer.port(path)
        peer.set_remote(path, self.port)
        self.frames: list[Parsed] = []
        self.cursor = 0
        self.responder: Optional[Callable[[FakeNic, Parsed], None]] = None
        self._arrived: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            p = f.parse(data)
            self.frames.append(p)
            if self.responder is not None:
                self.responder(self, p)
        assert self._arrived is not None
        self._arrived.set()

    def send(self, frame: bytes) -> None:
        self.sock.sendto(frame, ("127.0.0.1", self.peer_port))

    async def until(self, pred: Callable[[Parsed], bool], timeout: float = 2.0) -> list[Parsed]:
        """The frames not yet consumed, up to and including the first that matches."""
        assert self._loop is not None and self._arrived is not None
        deadline = self._loop.time() + timeout
        while True:
            for i in range(self.cursor, len(self.frames)):
                if pred(self.frames[i]):
                    got = self.frames[self.cursor : i + 1]
                    self.cursor = i + 1
                    return got
            self._arrived.clear()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                kinds = [p.kind for p in self.frames[self.cursor :]]
                raise AssertionError(f"{self.path}: no matching frame within {timeout} s; got {kinds}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def expect(self, pred: Callable[[Parsed], bool], timeout: float = 2.0) -> Parsed:
        return (await self.until(pred, timeout))[-1]
