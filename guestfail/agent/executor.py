"""Act: the only code that changes links.  Runs a plan's steps in order.

Transient kernel refusals (EBUSY, EAGAIN) are retried a bounded number of
times (tenacity); anything else, or the last retry, raises a `NetlinkFailure`
naming the step.  The caller re-observes and re-plans, so a half-done plan is
finished by the next one: every step is safe to repeat.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from typing import Callable, ClassVar, Optional, TypeVar, Union

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from guestfail.core.errors import GuestfailError
from guestfail.core.interfaces import Backend
from guestfail.core.model import Link
from guestfail.core.plan import Plan, links_first
from guestfail.core.steps import (
    AddAddresses,
    CreateMaster,
    DeleteMaster,
    Enslave,
    MoveAddresses,
    Ref,
    Release,
    Rename,
    SetDown,
    SetMac,
    SetPrimary,
    SetUp,
    Step,
)
from guestfail.system.netlink import NetlinkFailure, Rtnl, ifindex_of

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = frozenset({errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.EINTR})
RETRY_ATTEMPTS = 5


def transient(exc: BaseException) -> bool:
    return isinstance(exc, NetlinkFailure) and exc.code in TRANSIENT


def retrying(fn: Callable[[], T], attempts: int = RETRY_ATTEMPTS) -> T:
    """Call fn, retrying transient kernel refusals with backoff (50 ms to 1 s)."""
    for attempt in Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        retry=retry_if_exception(transient),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover


#: Fault injection for the crash tests, off unless the environment asks:
#: GUESTFAIL_FAULT=kill-after-steps=N kills this process (SIGKILL, as the
#: OOM killer or a power cut would) when N steps have run, right before the
#: next one; N=0 is just after the journal was written.
FAULT_ENV = "GUESTFAIL_FAULT"


def fault_limit(environ: Optional[dict[str, str]] = None) -> Optional[int]:
    value = (os.environ if environ is None else environ).get(FAULT_ENV, "")
    key, _, n = value.partition("=")
    if key == "kill-after-steps" and n.isdigit():
        return int(n)
    return None


class Executor:
    #: steps run in this process's life, by every executor (the fault hook counts them)
    steps_run: ClassVar[int] = 0

    def __init__(self, netlink: Rtnl, backend: Backend, ingress: bool = True) -> None:
        self.nl = netlink
        self.backend = backend
        self.ingress = ingress
        self.links: dict[int, Link] = {}
        self.kill_after = fault_limit()
        # primaries that refused a MAC (SetMac), by ifindex, with the kernel's answer
        self.mac_refused: dict[int, str] = {}

    def run(
        self, plan: Plan, links: dict[int, Link], before_enslave: Optional[Callable[[int, str], None]] = None
    ) -> None:
        self.run_steps(plan.spec.master_name, plan.steps, links, before_enslave)

    def run_steps(
        self,
        label: str,
        steps: list[Step],
        links: dict[int, Link],
        before_enslave: Optional[Callable[[int, str], None]] = None,
    ) -> None:
        """Run the steps in order.  `before_enslave(master, name)` runs once,
        before the first member joins a master (NetworkManager must take the
        master over while it is empty, or it detaches the members)."""
        self.links = links
        names = {idx: link.name for idx, link in links.items()}
        masters: dict[str, int] = {}

        def ref(r: Ref) -> int:
            if isinstance(r, int):
                return r
            if r in masters:
                return masters[r]
            idx = ifindex_of(self.nl, r)
            if idx is None:
                raise NetlinkFailure(f"find {r}", errno.ENODEV)
            masters[r] = idx
            names[idx] = r
            return idx

        def name(idx: int) -> str:
            return names.get(idx, str(idx))

        def known(r: Ref) -> str:
            if isinstance(r, int):
                return name(r)
            return name(masters[r]) if r in masters else r

        hook = before_enslave
        for step in steps:
            if self.kill_after is not None and Executor.steps_run >= self.kill_after:
                log.warning("%s: %s: killed before %s", label, FAULT_ENV, describe(step, known))
                os.kill(os.getpid(), signal.SIGKILL)
            if hook is not None and isinstance(step, Enslave):
                m = ref(step.master)
                hook(m, name(m))
                hook = None
            log.info("%s: %s", label, describe(step, known))
            retrying(lambda s=step: self._one(s, ref, name, names, masters))  # type: ignore[misc]
            Executor.steps_run += 1

    def _reclaim(self, step: Union[Rename, CreateMaster], holder: Optional[Link] = None) -> bool:
        """Take `step.name` back from a member that holds it as an altname
        (`holder`: who has the name, if just read)."""
        holder = holder if holder is not None else self.nl.holder_of(step.name)
        if holder is None or holder.ifindex not in step.reclaim_from or step.name not in holder.altnames:
            return False
        log.info("taking %s back from %s, which has it as an altname", step.name, holder.name)
        self.nl.del_altname(holder.ifindex, holder.name, step.name)
        return True

    def _one(
        self,
        step: Step,
        ref: Callable[[Ref], int],
        name: Callable[[int], str],
        names: dict[int, str],
        masters: dict[str, int],
    ) -> None:
        if isinstance(step, CreateMaster):
            # a master of ours under that name (an earlier, interrupted pass)
            # is used; a member's altname of that name is taken back; anything
            # else holding the name is an error
            holder = self.nl.holder_of(step.name)
            if holder is not None and holder.kind == step.kind and holder.marker is not None:
                idx = holder.ifindex
            elif (
                holder is not None
                and step.adopt_unmarked
                and holder.kind == step.kind
                and not holder.ifalias
                and holder.name == step.name
            ):
                # guestfail died between creating and marking it (the journal
                # says so): it is ours, and there must not be a second one
                log.info("%s: taking over the %s guestfail was creating", step.name, step.kind)
                self.backend.adopt_master(holder, step)
                idx = holder.ifindex
            else:
                if holder is not None and not self._reclaim(step, holder):
                    raise NetlinkFailure(
                        f"create {step.kind} {step.name}: {holder.name} has that name", errno.EEXIST
                    )
                try:
                    idx = self.backend.create_master(step)
                except GuestfailError:
                    # udev may give the renamed standby its old name as an
                    # altname a moment after the check above (teamd then
                    # fails with EEXIST): take it back and create again
                    if not self._reclaim(step):
                        raise
                    idx = self.backend.create_master(step)
            masters[step.name] = idx
            names[idx] = step.name
        elif isinstance(step, SetDown):
            i = ref(step.link)
            self.nl.set_state(i, name(i), up=False)
        elif isinstance(step, SetUp):
            i = ref(step.link)
            self.nl.set_state(i, name(i), up=True)
        elif isinstance(step, Rename):
            i = ref(step.link)
            old = name(i)
            try:
                self.nl.set_name(i, old, step.name)
            except NetlinkFailure as e:
                if e.code != errno.EEXIST or not self._reclaim(step):
                    raise
                self.nl.set_name(i, old, step.name)
            names[i] = step.name
            if i in masters.values():
                masters[step.name] = i
            if step.keep_altname:
                try:
                    self.nl.add_altname(i, step.name, step.keep_altname)
                except NetlinkFailure as e:
                    # udev may have given it that altname already (its
                    # AlternativeNamesPolicy); altnames need Linux 5.5; a name
                    # is never worth failing a pair over
                    holder = self.nl.holder_of(step.keep_altname) if e.code == errno.EEXIST else None
                    if holder is None or holder.ifindex != i:
                        log.warning("%s", e)
        elif isinstance(step, Enslave):
            i, m = ref(step.link), ref(step.master)
            self.backend.enslave(i, name(i), m, name(m))
            if self.ingress:
                self.nl.redirect_unicast(i, name(i), m, name(m))
        elif isinstance(step, Release):
            i = ref(step.link)
            current = self.nl.get_link(i)
            if current is not None and current.master:
                self.nl.clear_redirect(i, name(i))
                self.backend.release(i, name(i), current.master, name(current.master))
        elif isinstance(step, SetMac):
            i = ref(step.link)
            try:
                self.nl.set(i, f"set the MAC of {name(i)} to {step.mac}", address=step.mac)
            except NetlinkFailure as e:
                if e.code == errno.ENODEV or transient(e):
                    raise
                # an untrusted VF: the host keeps its MAC; the bond's
                # fail_over_mac=active carries the pair instead
                log.warning(
                    "%s refused the MAC %s (%s): its master's MAC follows the active member",
                    name(i),
                    step.mac,
                    e,
                )
                self.mac_refused[i] = str(e)
        elif isinstance(step, SetPrimary):
            m = ref(step.master)
            s = ref(step.slave) if step.slave is not None else None
            self.backend.set_primary(m, name(m), s, name(s) if s else "")
        elif isinstance(step, MoveAddresses):
            src, dst = ref(step.src), ref(step.dst)
            # addresses first, then link routes: a route's gateway must be
            # reachable on dst
            for a in step.addresses:
                self.nl.add_address(dst, name(dst), a.relabelled(name(dst)))
            for r in links_first(step.routes):
                if not r.nexthops:
                    # a route with the same key out of src would make the
                    # kernel refuse this one (EEXIST); a multipath route is
                    # replaced as a whole
                    self.nl.del_route(src, name(src), r)
                self.nl.add_route(dst, name(dst), r.moved(src, dst))
            for a in step.addresses:
                self.nl.del_address(src, name(src), a)
        elif isinstance(step, AddAddresses):
            i = ref(step.link)
            for a in step.addresses:
                self.nl.add_address(i, name(i), a.relabelled(name(i)))
            for r in links_first(step.routes):
                self.nl.add_route(i, name(i), r)
        elif isinstance(step, DeleteMaster):
            m = ref(step.master)
            # a redirect to a master that is gone would drop the member's frames
            for idx, link in self.links.items():
                if link.master == m:
                    self.nl.clear_redirect(idx, name(idx))
            self.backend.delete_master(m, name(m))
        else:  # pragma: no cover
            raise AssertionError(f"unknown step {step!r}")


def describe(step: Step, name: Callable[[Ref], str]) -> str:
    def n(r: Optional[Ref]) -> str:
        return "-" if r is None else name(r)

    if isinstance(step, CreateMaster):
        return f"create {step.kind} {step.name} (MAC {step.mac}, MTU {step.mtu})"
    if isinstance(step, SetDown):
        return f"set {n(step.link)} down"
    if isinstance(step, SetUp):
        return f"set {n(step.link)} up"
    if isinstance(step, Rename):
        alt = f", keeping {step.keep_altname} as altname" if step.keep_altname else ""
        return f"rename {n(step.link)} to {step.name}{alt}"
    if isinstance(step, Enslave):
        return f"enslave {n(step.link)} to {n(step.master)}"
    if isinstance(step, Release):
        return f"release {n(step.link)}"
    if isinstance(step, SetPrimary):
        return f"primary of {n(step.master)}: {n(step.slave)}"
    if isinstance(step, SetMac):
        return f"give {n(step.link)} the MAC {step.mac}"
    if isinstance(step, MoveAddresses):
        addrs = ", ".join(f"{a.address}/{a.prefixlen}" for a in step.addresses) or "no addresses"
        return f"move {addrs} and {len(step.routes)} routes from {n(step.src)} to {n(step.dst)}"
    if isinstance(step, AddAddresses):
        addrs = ", ".join(f"{a.address}/{a.prefixlen}" for a in step.addresses) or "no addresses"
        return f"put {addrs} and {len(step.routes)} routes back on {n(step.link)}"
    if isinstance(step, DeleteMaster):
        return f"delete {n(step.master)}"
    return repr(step)  # pragma: no cover
