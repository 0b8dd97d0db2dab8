"""SIGHUP (systemctl reload) as guestfail(8) describes it under `run`: the
file is read again and a reconciliation requested; a file with errors, or
one that changes agent.backend or agent.state_dir, leaves the running
configuration as it was."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from guestfail import config
from guestfail.daemon import Daemon


def daemon_with(path: Path, text: str) -> Daemon:
    path.write_text(text)
    return Daemon(config.load(path), use_udev=False, use_dbus=False)


def test_a_reload_reads_the_file_again_and_reconciles(tmp_path: Path) -> None:
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
        assert d.cfg.rules == ("mac",)
        assert d.cfg.metrics.textfile == f"{tmp_path}/gf.prom"
        # masters built from now on get the new bond options
        assert d._slow_backend.cfg.bond.miimon == 250 and d._fast_backend.cfg.bond.miimon == 250
        assert d._dirty.is_set() and d._dirty_why[-1] == "configuration reloaded"
    finally:
        d._fast.shutdown()
        d._slow.shutdown()


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
        assert not d._dirty.is_set()
    finally:
        d._fast.shutdown()
        d._slow.shutdown()
