"""Errors, named by who must act, and the exit codes they map to.

The CLI maps exceptions to exit codes here and only here.  The codes are
documented in the man page and the README; they never change meaning.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    #: guestfail's own bug: an unexpected exception.
    INTERNAL = 1
    #: The command line is wrong (argparse uses 2 as well).
    USAGE = 2
    #: `status`: at least one pair runs degraded (on its standby, or a refusal
    #: leaves a VF unused), none failed.
    DEGRADED = 3
    #: `status`: at least one pair failed (no working member, or guestfail
    #: could not set it up).
    FAILED = 4
    #: The configuration file is invalid; nothing was changed.
    CONFIG = 5
    #: The system refused or is not as required (permissions, the kernel,
    #: the daemon unreachable for a command that needs it).
    SYSTEM = 6
    #: A named pair or member does not exist.
    NOT_FOUND = 7
    #: `status`: the daemon is not running (what is shown may be stale, and
    #: nothing switches).
    NOT_RUNNING = 8


class GuestfailError(Exception):
    """Base class; `exit` tells the CLI which code to use."""

    exit = Exit.INTERNAL


class UsageError(GuestfailError):
    exit = Exit.USAGE


class ConfigError(GuestfailError):
    """The configuration is invalid.  `key` is the dotted path of the culprit."""

    exit = Exit.CONFIG

    def __init__(self, key: str, problem: str, source: str = "") -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Each problem on its own (one line each)."""
        return (self,)


class ConfigErrors(ConfigError):
    """Several problems in one file; `key` and `problem` are the first's, the
    message has one line per problem."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.key, first.problem, first.source)
        self._errors = tuple(errors)
        self.args = ("\n".join(str(e) for e in errors),)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors


class SystemRefused(GuestfailError):
    """The kernel, a daemon or the permissions refused what we asked."""

    exit = Exit.SYSTEM


class NotFound(GuestfailError):
    exit = Exit.NOT_FOUND
