"""SIGHUP (systemctl reload) as guestfail(8) describes it under `run`: the
file is read again and a reconciliation requested; a file with errors, or
one that changes agent.backend or agent.state_dir, leaves the running
configuration as it was.  And `guestfail run` makes its daemon inside its
event loop (Python 3.9)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from guestfail.agent import daemon as daemon_mod
from guestfail.agent.daemon import Daemon
from guestfail.core import config


def daemon_with(path: Path, text: str) -> Daemon:
    """A daemon reading `path` (made inside the running loop, as run() does)."""
    path.write_text(text)
    return Daemon(config.load(path), use_udev=False, use_dbus=False)


def test_a_reload_reads_the_file_again_and_reconciles(tmp_path: Path) -> None:
    async def go() -> None:
        f = tmp_path / "guestfail.toml"
        d = daemon_with(f, f'[agent]\nstate_dir = "{tmp_path}"\n')
        try:
            assert d.cfg.announce and d.cfg.metrics.textfile == ""
            f.write_text(
                f'[agent]\nstate_dir = "{tmp_path}"\nannounce = false\nmatch = ["mac"]\n'
                f'[bond]\nmiimon = 250\n[metrics]\ntextfile = "{tmp_path}/gf.prom"\n'
            )
            d.reload()
            assert not d.cfg.announce
            assert d.cfg.rules == ("mac",) and d.reconciler.cfg is d.cfg  # the matching
            assert d.cfg.metrics.textfile == f"{tmp_path}/gf.prom"
            # masters built from now on get the new bond options
            assert d._slow_backend.cfg.bond.miimon == 250 and d._fast_backend.cfg.bond.miimon == 250
            assert d.reconciling._wanted.is_set() and d.reconciling._whys[-1] == "configuration reloaded"
        finally:
            await d.shutdown()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("change", "logged"),
    [
        (
            'backend = "bnd"\nnamign = "keep"\n',
            ["agent.backend: must be one of", "agent.namign: unknown key"],
        ),
        ('backend = "team"\n', ["agent.backend and agent.state_dir change only with a restart"]),
    ],
)
def test_a_bad_or_restart_only_change_keeps_the_running_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str, logged: list[str]
) -> None:
    async def go() -> None:
        f = tmp_path / "guestfail.toml"
        d = daemon_with(f, f'[agent]\nstate_dir = "{tmp_path}"\n')
        try:
            before = d.cfg
            f.write_text(f'[agent]\nstate_dir = "{tmp_path}"\nannounce = false\n{change}')
            with caplog.at_level(logging.ERROR, logger="guestfail"):
                d.reload()
            assert d.cfg is before  # announce = false did not apply either
            text = "\n".join(r.getMessage() for r in caplog.records)
            for words in logged:
                assert words in text
            assert not d.reconciling._wanted.is_set()  # no reconciliation asked for
        finally:
            await d.shutdown()

    asyncio.run(go())


def test_run_makes_the_daemon_inside_its_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """daemon.run() (what `guestfail run` calls) on every Python: a daemon made
    before asyncio.run() fails at its first wait on 3.9, where an Event binds
    to the loop current when it is made.  Daemon.run's netlink and udev are
    replaced by a stop and a wait on the daemon's own Event."""

    async def stop_and_wait(self: Daemon) -> int:
        asyncio.get_running_loop().call_soon(self._stop.set)
        await self._stop.wait()
        await self.shutdown()
        return 0

    monkeypatch.setattr(Daemon, "run", stop_and_wait)
    current = asyncio.new_event_loop()
    asyncio.set_event_loop(current)  # a current loop, as at start-up on 3.9
    try:
        cfg = config.parse(f'[agent]\nstate_dir = "{tmp_path}"\n')
        assert daemon_mod.run(cfg, use_udev=False, use_dbus=False) == 0
    finally:
        current.close()
        asyncio.set_event_loop(None)
