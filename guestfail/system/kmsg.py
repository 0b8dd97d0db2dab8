"""The kernel's log as it is written: /dev/kmsg, one record per read.

Read-only and non-blocking; the file descriptor goes to the event loop, so
the daemon wakes only when the kernel logs something.  Opened at the end:
only what is logged from now on is read.  A record (Documentation/ABI/
testing/dev-kmsg) is ``<prio>,<seq>,<usec>,<flags>[,...];<text>`` and then
`` KEY=value`` lines (SUBSYSTEM, DEVICE).  When the ring buffer overwrote
records before they were read, read() fails once with EPIPE: reported as
lost, and reading goes on.

Why the daemon reads it, and under which sandbox: guestfail.core.button.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

KMSG = "/dev/kmsg"
_CHUNK = 8192  # a record is at most about 1 KiB of text plus its fields


@dataclass(frozen=True)
class Record:
    facility: int  # 0: the kernel
    level: int
    seq: int
    text: str
    fields: tuple[tuple[str, str], ...] = ()

    def field(self, key: str) -> str:
        return next((v for k, v in self.fields if k == key), "")


def parse(chunk: bytes) -> list[Record]:
    """The records in what one read returned (one from /dev/kmsg; a pipe in
    the tests may give several): a line that does not begin with a space
    begins a record."""
    out: list[Record] = []
    head: list[str] = []
    fields: list[tuple[str, str]] = []

    def done() -> None:
        if not head:
            return
        prefix, _, text = head[0].partition(";")
        parts = prefix.split(",")
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            prio = int(parts[0])
            out.append(Record(prio >> 3, prio & 7, int(parts[1]), text, tuple(fields)))

    for line in chunk.decode("utf-8", "replace").split("\n"):
        if line.startswith(" "):
            key, sep, value = line[1:].partition("=")
            if sep:
                fields.append((key, value))
        elif line:
            done()
            head, fields = [line], []
    done()
    return out


class Kmsg:
    def __init__(self, path: str = KMSG) -> None:
        """OSError if the log cannot be read (no such device; EPERM without
        CAP_SYSLOG where kernel.dmesg_restrict is 1)."""
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.lseek(self.fd, 0, os.SEEK_END)  # from now on
        except OSError as e:
            if e.errno != errno.ESPIPE:  # a pipe (the tests) has no end to seek to
                os.close(self.fd)
                raise

    def fileno(self) -> int:
        return self.fd

    def read(self) -> tuple[list[Record], int]:
        """The records there are now, and how many times records were lost."""
        out: list[Record] = []
        lost = 0
        while True:
            try:
                chunk = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten before we read them
                    lost += 1
                    continue
                if e.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            out.extend(parse(chunk))
        return out, lost

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
