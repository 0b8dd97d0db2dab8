"""The `guestfail` command: the parser and its commands (main), `status`
(status: gather, render, exit code), the daemon's D-Bus client (client).
May import anything in guestfail."""

from guestfail.cli.commands import main

__all__ = ["main"]
