"""The `vm` tier: every test boots the lab's guest kernel and asserts on what
the guest kernel and the lab's peer report, not on guestfail's own word.

GUESTFAIL_LAB_AGENT=installed runs the agent from the installed package
(/usr/bin/guestfail with the distribution's Python libraries) instead of this
checkout.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Callable, Optional

import pytest

from lab.topology import Topology
from lab.vm import Lab

from .helpers import Guest, lab_available


def _interrupt(signum: int, _frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM or SIGHUP (a CI timeout, a closed terminal) stops the run like
    Ctrl-C: pytest then tears the current lab down, so no QEMU outlives it."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = lab_available()
    for item in items:
        if "tests/vm/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vm)
            if why and not os.environ.get("GUESTFAIL_REQUIRE_LAB"):
                item.add_marker(pytest.mark.skip(reason=f"no lab: {why}"))


def _logs(guest: Guest) -> list[tuple[str, str]]:
    lab = guest.lab
    out = [
        ("guest kernel: its first trouble", lab.kernel_trouble(100)),
        ("guest kernel log (tail)", lab.kernel_log_tail(60)),
        ("guest network", lab.net_report()),
    ]
    for i in range(1, guest.agents + 1):
        out.append((f"guest agent{i}.log (tail)", lab.log_tail(f"agent{i}", 120)))
    # what else the test started in the guest (NetworkManager, networkd, teamd...)
    for log in sorted(lab.workdir.glob("*.log")):
        key = log.stem
        if key not in ("console", "stdout") and not key.startswith("agent"):
            out.append((f"guest {key}.log (tail)", lab.log_tail(key, 80)))
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the guest's console and agent logs."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when == "call":
        item.stash[_FAILED] = rep.failed
        if rep.failed:
            for g in item.stash.get(_GUESTS, []):
                for title, text in _logs(g):
                    rep.sections.append((title, text))


_GUESTS = pytest.StashKey[list[Guest]]()
_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def boot(request: pytest.FixtureRequest) -> Iterator[Callable[[Topology], Guest]]:
    """boot(topology) -> Guest; torn down (no QEMU, socket or temp dir left)
    even when the test fails, with the guest's logs attached to the report."""
    guests: list[Guest] = []
    request.node.stash[_GUESTS] = guests

    def _boot(topo: Topology) -> Guest:
        lab = Lab(topo, name=request.node.name[:20].replace("[", "-").replace("]", ""))
        lab.start()
        g = Guest(lab)
        g.install()
        g.scope_before = g.out_of_scope()
        guests.append(g)
        return g

    yield _boot
    for g in guests:
        try:
            if not request.node.stash.get(_FAILED, True) and g.scope_before:
                # scenario 8: loopback and the NIC that is no one's pair are
                # exactly as they were, after every scenario
                assert g.out_of_scope() == g.scope_before
        finally:
            g.lab.close()
