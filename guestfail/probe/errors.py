"""guestfail-probe's exit codes and its own errors.

The codes shared with `guestfail` (1, 2, 6, 7) mean the same in both
commands (`guestfail.core.errors.Exit`); the verdicts and the probe's own outcomes
have codes of their own.  Documented in guestfail-probe(8) and `--help`;
they never change meaning.
"""

from __future__ import annotations

from enum import IntEnum

from guestfail.core.errors import Exit, GuestfailError


class ProbeExit(IntEnum):
    #: verdict late: frames for the VF's MAC reach the PF until a VF driver
    #: runs (or always); a VM's standby path keeps them meanwhile
    LATE = 0
    INTERNAL = int(Exit.INTERNAL)
    USAGE = int(Exit.USAGE)
    #: the system refused (permissions, the kernel, a driver); restored
    SYSTEM = int(Exit.SYSTEM)
    #: no such PF, VF or sender
    NOT_FOUND = int(Exit.NOT_FOUND)
    #: verdict early: setting the VF's MAC on the host moves its frames away
    #: from the PF before any VF driver runs
    EARLY = 10
    #: no verdict; the report says why
    INCONCLUSIVE = 11
    #: the VF (or another VF of the PF) is in use; nothing was changed
    IN_USE = 12
    #: something could not be put back; the report lists what
    NOT_RESTORED = 13
    # 128 + N: stopped by signal N (Ctrl-C: 130, SIGTERM: 143) after restoring


class InUse(GuestfailError):
    """The VF, or another VF of the PF, is in use."""

    exit = ProbeExit.IN_USE  # type: ignore[assignment]


class NotRestored(GuestfailError):
    """Restoring left differences behind."""

    exit = ProbeExit.NOT_RESTORED  # type: ignore[assignment]
