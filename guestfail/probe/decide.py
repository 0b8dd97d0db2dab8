"""The probe's decisions, pure: no system access here.

* `check`: refuse (in use, bad input) or list why a measurement would say
  nothing (promiscuous PF, a bridge, switchdev) before anything is changed;
* `probe_steps`: the states A-D and the changes between them;
* `restore_steps`: what brings the system from `now` back to `orig`
  (run until it is empty: restoring is "make it equal again", so it works
  wherever a run was stopped, and again after a crash from the journal);
* `verdict`: early, late or inconclusive from the frame counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from guestfail.core.errors import NotFound, UsageError
from guestfail.probe.errors import InUse
from guestfail.probe.facts import ZERO_MAC, Netdev, Sender, Snapshot, VfConfig, VfDevice, is_unicast

STATES = ("A", "B", "C", "D")
STATE_TEXT = {
    "A": "VF without a driver, test MAC on the PF's filter only",
    "B": "VF's MAC set on the host (netlink), still no VF driver",
    "C": "VF driver bound, VF link down",
    "D": "VF up",
}
#: drivers that give a VF to a VM, not to the host
VM_DRIVERS = ("vfio-pci", "pci-stub")
#: the probe's own VLAN devices on the PF: gfprobe.<vid>
VLAN_PREFIX = "gfprobe."
#: at least this share of the frames sent must arrive to count as "all"
ALL_SHARE = 0.9


def vlan_link_name(vlan: int) -> str:
    return f"{VLAN_PREFIX}{vlan}"


def is_host_driver(driver: str) -> bool:
    return bool(driver) and driver not in VM_DRIVERS


@dataclass(frozen=True)
class Options:
    pf: str
    vf: int
    mac: str  # the test MAC, normalized
    vlan: int = 0
    qos: int = 0
    sender: str = ""
    sender_netns: str = ""
    frames: int = 50
    force: bool = False
    #: the VF driver for states C and D ("" = the VF's own host driver, else the kernel's choice)
    vf_driver: str = ""


# ---------------------------------------------------------------- checks


def check(s: Snapshot, o: Options, sender: Optional[Sender] = None) -> list[str]:
    """Refuse (raises) what must not be touched or cannot work; return the
    reasons a measurement would be inconclusive (nothing is changed then)."""
    if s.nic.numvfs <= 0:
        raise UsageError(
            f"{o.pf} has no VFs enabled (echo N > /sys/class/net/{o.pf}/device/sriov_numvfs first)"
        )
    vf = s.vf(o.vf)
    cfg = s.config(o.vf)
    if vf is None or cfg is None:
        raise NotFound(f"{o.pf} has {s.nic.numvfs} VFs (0-{s.nic.numvfs - 1}): there is no VF {o.vf}")
    if not is_unicast(o.mac) or o.mac == ZERO_MAC:
        raise UsageError(f"--mac {o.mac}: the test MAC must be a unicast address")
    if o.mac == s.pf.mac:
        raise UsageError(f"--mac {o.mac} is {o.pf}'s own MAC: choose another test MAC")
    for c in s.configs:
        if c.mac == o.mac:
            raise UsageError(f"--mac {o.mac} is already VF {c.index}'s MAC: choose another test MAC")
    for v in s.vfs:
        if v.netdev is not None and v.netdev.mac == o.mac:
            raise UsageError(f"--mac {o.mac} is {v.netdev.name}'s MAC: choose another test MAC")
    if not 0 <= o.vlan <= 4094:
        raise UsageError(f"--vlan {o.vlan}: a VLAN id is 1 to 4094")
    if not 0 <= o.qos <= 7:
        raise UsageError(f"--qos {o.qos}: a priority is 0 to 7")
    if o.vlan == 0 and cfg.vlan:
        raise UsageError(
            f"VF {o.vf} has VLAN {cfg.vlan}: give --vlan {cfg.vlan} (frames for it carry that tag)"
        )
    if sender is not None:
        if sender.netns == "" and sender.name in (o.pf, vlan_link_name(o.vlan)):
            raise UsageError(f"--sender {sender.name} is the PF: frames must come from another port")
        if sender.netns == "" and vf.netdev is not None and sender.name == vf.netdev.name:
            raise UsageError(f"--sender {sender.name} is the VF under test")
        if sender.mac == o.mac:
            raise UsageError(f"--mac {o.mac} is the sender's own MAC: choose another test MAC")
        if not sender.up or not sender.running:
            where = f" in netns {sender.netns}" if sender.netns else ""
            raise UsageError(
                f"sender {sender.name}{where} is {'down' if not sender.up else 'up without carrier'}: "
                "the probe does not change the sender; bring it up with a link first"
            )
    if s.probe_links:
        raise InUse(
            f"{', '.join(s.probe_links)} exists on {o.pf}: another guestfail-probe runs, or one was "
            f"killed (guestfail-probe --restore --pf {o.pf})"
        )
    # in use: a VM holds the VF (never forced: unbinding it would hang or
    # pull the device out from under the VM)
    if vf.vfio_users:
        raise InUse(
            f"VF {o.vf} ({vf.address}) is assigned to a running VM "
            f"({vf.driver}, held open by pid {', '.join(map(str, vf.vfio_users))})"
        )
    if vf.netdev is not None and vf.netdev.up and not o.force:
        raise InUse(
            f"VF {o.vf}'s netdev {vf.netdev.name} is up: it is in use on this host (--force to probe anyway)"
        )
    busy = [v for v in s.vfs if v.index != o.vf and v.vfio_users]
    if busy and not o.force:
        names = ", ".join(f"VF {v.index} (pid {', '.join(map(str, v.vfio_users))})" for v in busy)
        raise InUse(
            f"{o.pf} has VFs assigned to running VMs: {names}; changing the PF's filters may disturb "
            "them (--force to probe anyway)"
        )
    reasons: list[str] = []
    if s.pf.master:
        kind = s.pf.master_kind or "master"
        reasons.append(
            f"{o.pf} is a port of {kind} {s.pf.master}: frames reach it by the {kind}'s rules, "
            "not by the NIC's MAC filter"
        )
    if s.pf.promiscuity > 0:
        reasons.append(
            f"{o.pf} is promiscuous (promiscuity {s.pf.promiscuity}: a packet capture, a bridge or a "
            "macvtap in passthru mode): it receives frames for any MAC, so it cannot show where the "
            "NIC steers one"
        )
    if s.nic.switchdev:
        reasons.append(
            f"the eswitch of {o.pf} is in switchdev mode ({s.nic.switchdev}): VF traffic follows "
            "the representors' rules, not the legacy MAC filter"
        )
    return reasons


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    action: str
    text: str
    state: str = ""  # measure
    name: str = ""  # vlan_add / vlan_del / listen: the link
    driver: str = ""  # bind
    mac: str = ""  # set_vf / netdev
    vlan: Optional[int] = None  # set_vf: None = leave the VLAN as it is
    qos: int = 0
    mtu: int = 0  # netdev
    up: Optional[bool] = None  # netdev / pf


def c_driver(vf: VfDevice, o: Options) -> str:
    """The driver bound in state C ("" = the kernel's choice)."""
    if o.vf_driver:
        return o.vf_driver
    return vf.driver if is_host_driver(vf.driver) else ""


def probe_steps(s: Snapshot, o: Options) -> list[Step]:
    vf = s.vf(o.vf)
    cfg = s.config(o.vf)
    assert vf is not None and cfg is not None
    steps: list[Step] = []
    if not s.pf.up:
        steps.append(Step("pf_up", f"set {o.pf} up (it is down) and wait for its carrier", up=True))
    listen = o.pf
    if o.vlan:
        # a VLAN device opens only on an up PF
        listen = vlan_link_name(o.vlan)
        steps.append(
            Step(
                "vlan_add",
                f"create VLAN device {listen} (VLAN {o.vlan}) on {o.pf}, so the PF takes that VLAN's frames",
                name=listen,
                vlan=o.vlan,
            )
        )
    steps.append(
        Step(
            "listen",
            f"add {o.mac} to {listen}'s unicast filter (a packet socket's membership, no promiscuous "
            f"mode) and count the test frames arriving on {listen}",
            name=listen,
        )
    )
    if is_host_driver(vf.driver):
        steps.append(Step("unbind", f"unbind VF {o.vf} ({vf.address}) from {vf.driver}"))
    steps.append(Step("measure", f"A: {STATE_TEXT['A']}", state="A"))
    vlan: Optional[int] = None
    what = f"set VF {o.vf}'s MAC to {o.mac} (IFLA_VF_MAC)"
    if (o.vlan, o.qos) != (cfg.vlan, cfg.qos):
        vlan = o.vlan
        what += f" and VLAN {o.vlan} (IFLA_VF_VLAN)"
    steps.append(Step("set_vf", what, mac=o.mac, vlan=vlan, qos=o.qos))
    steps.append(Step("measure", f"B: {STATE_TEXT['B']}", state="B"))
    drv = c_driver(vf, o)
    bind_text = f"bind VF {o.vf} to {drv or 'the driver the kernel picks'}"
    if vf.driver and not is_host_driver(vf.driver):
        bind_text += f" (unbinding {vf.driver})"
    steps.append(Step("bind", bind_text + ", wait for its netdev", driver=drv))
    steps.append(Step("measure", f"C: {STATE_TEXT['C']}", state="C"))
    steps.append(Step("vf_up", f"set VF {o.vf}'s netdev up and count the test frames there too", up=True))
    steps.append(Step("measure", f"D: {STATE_TEXT['D']}", state="D"))
    return steps


def _cfg_key(c: VfConfig) -> tuple[str, int, int]:
    return (c.mac, c.vlan, c.qos)


def driver_chose_mac(orig_vf: VfDevice, orig_cfg: VfConfig) -> bool:
    """The VF's MAC looks chosen by its host driver, not set by an
    administrator: its netdev has the MAC the PF reports.  Restoring it with
    IFLA_VF_MAC would pin it (igb: "administratively set"); clearing it and
    giving the netdev its MAC back restores what was there."""
    return (
        is_host_driver(orig_vf.driver)
        and orig_vf.netdev is not None
        and orig_cfg.mac != ZERO_MAC
        and orig_vf.netdev.mac == orig_cfg.mac
    )


def mac_told_to_pf(o_vf: VfDevice, o_cfg: VfConfig, n_vf: VfDevice, n_cfg: VfConfig) -> bool:
    """igb: a VF whose driver started while the PF could not hear it shows
    00:00:00:00:00:00 in the PF's VF list although its netdev has a MAC; the
    driver tells the PF that MAC when it starts again with the PF up, and the
    list shows it.  Set by no administrator either way, the same MAC on the
    VF's netdev, the same driver: nothing to put back."""
    return (
        o_cfg.mac == ZERO_MAC
        and is_host_driver(o_vf.driver)
        and n_vf.driver == o_vf.driver
        and o_vf.netdev is not None
        and n_vf.netdev is not None
        and n_cfg.mac == n_vf.netdev.mac == o_vf.netdev.mac
    )


def restore_notes(orig: Snapshot, now: Snapshot, vf_index: int) -> list[str]:
    """Differences that remain after restoring but are not changes (see
    `mac_told_to_pf`), one sentence each, for the report."""
    o_vf, n_vf = orig.vf(vf_index), now.vf(vf_index)
    o_cfg, n_cfg = orig.config(vf_index), now.config(vf_index)
    if o_vf is None or n_vf is None or o_cfg is None or n_cfg is None or o_cfg.mac == n_cfg.mac:
        return []
    if mac_told_to_pf(o_vf, o_cfg, n_vf, n_cfg):
        return [
            f"{orig.pf.name}'s VF list shows VF {vf_index}'s MAC as {n_cfg.mac}, where it showed "
            f"{o_cfg.mac}: its driver ({n_vf.driver}) told the PF the MAC it uses when it started "
            "again; the MAC and who set it are as before"
        ]
    return []


def restore_steps(orig: Snapshot, now: Snapshot, vf_index: int, *, first_pass: bool = True) -> list[Step]:
    """The changes that make `now` equal to `orig` again, in order; [] when
    nothing differs.  Call again after running them (a bound driver's netdev
    only exists after the bind)."""
    steps = [Step("vlan_del", f"delete {name}", name=name) for name in now.probe_links]
    o_vf, n_vf = orig.vf(vf_index), now.vf(vf_index)
    o_cfg, n_cfg = orig.config(vf_index), now.config(vf_index)
    if o_vf is not None and n_vf is not None and o_cfg is not None and n_cfg is not None:
        cfg_differs = _cfg_key(o_cfg) != _cfg_key(n_cfg) and not (
            (o_cfg.vlan, o_cfg.qos) == (n_cfg.vlan, n_cfg.qos) and mac_told_to_pf(o_vf, o_cfg, n_vf, n_cfg)
        )
        driver_differs = n_vf.driver != o_vf.driver
        if n_vf.driver and (driver_differs or (cfg_differs and is_host_driver(n_vf.driver))):
            steps.append(Step("unbind", f"unbind VF {vf_index} from {n_vf.driver}"))
            n_vf = replace(n_vf, driver="", netdev=None)
        if cfg_differs:
            mac = o_cfg.mac
            if first_pass and driver_chose_mac(o_vf, o_cfg):
                mac = ZERO_MAC  # the netdev gets its MAC back below
            vlan = o_cfg.vlan if (o_cfg.vlan, o_cfg.qos) != (n_cfg.vlan, n_cfg.qos) else None
            what = f"set VF {vf_index}'s MAC back to {mac}"
            if vlan is not None:
                what += f" and VLAN to {vlan}" + (f" qos {o_cfg.qos}" if o_cfg.qos else "")
            steps.append(Step("set_vf", what, mac=mac, vlan=vlan, qos=o_cfg.qos))
        # the PF as it was before the VF driver binds again: drivers read the
        # PF's state when they start (igbvf: a random MAC while the PF is down)
        steps.extend(_pf_steps(orig, now))
        if o_vf.driver and n_vf.driver != o_vf.driver:
            steps.append(Step("bind", f"bind VF {vf_index} to {o_vf.driver} again", driver=o_vf.driver))
        elif o_vf.netdev is not None and n_vf.netdev is not None:
            steps.extend(_netdev_steps(o_vf.netdev, n_vf.netdev))
    else:
        steps.extend(_pf_steps(orig, now))
    return steps


def _pf_steps(orig: Snapshot, now: Snapshot) -> list[Step]:
    if now.pf.up == orig.pf.up:
        return []
    return [Step("pf", f"set {orig.pf.name} {'up' if orig.pf.up else 'down'} again", up=orig.pf.up)]


def _netdev_steps(o: Netdev, n: Netdev) -> list[Step]:
    out: list[Step] = []
    if n.up and not o.up:
        out.append(Step("netdev", f"set {n.name} down again", name=n.name, up=False))
    if n.name != o.name:
        out.append(Step("netdev", f"rename {n.name} to {o.name} again", name=o.name))
    if n.mac != o.mac:
        out.append(Step("netdev", f"give {o.name} its MAC {o.mac} again", mac=o.mac))
    if n.mtu != o.mtu:
        out.append(Step("netdev", f"give {o.name} its MTU {o.mtu} again", mtu=o.mtu))
    if o.up and not n.up:
        out.append(Step("netdev", f"set {o.name} up again", up=True))
    return out


# ---------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Count:
    state: str
    sent: int
    pf: int
    vf: Optional[int] = None  # None: no VF netdev to count on
    note: str = ""

    def level(self, n: Optional[int]) -> str:
        return level(n, self.sent)


def level(received: Optional[int], sent: int) -> str:
    """How many arrived: all, none, some, or - (not counted)."""
    if received is None or sent <= 0:
        return "-"
    if received == 0:
        return "none"
    if received >= sent * ALL_SHARE:
        return "all"
    return "some"


@dataclass(frozen=True)
class Verdict:
    kind: str  # early | late | inconclusive
    reason: str
    #: the first state in which the PF got none of the frames ("" = never, or unknown)
    steered_at: str = ""


def verdict(counts: list[Count], reasons: tuple[str, ...] = ()) -> Verdict:
    if reasons:
        return Verdict("inconclusive", "; ".join(reasons))
    by = {c.state: c for c in counts}
    a, b = by.get("A"), by.get("B")
    if a is None or b is None:
        return Verdict("inconclusive", "the run stopped before states A and B were measured")
    la = a.level(a.pf)
    if la == "none":
        return Verdict(
            "inconclusive",
            f"in state A the PF got none of the {a.sent} test frames although the test MAC was on "
            "its filter: the sender does not reach the PF (another segment or VLAN, a switch that "
            "drops them, no link)",
        )
    if la == "some":
        return Verdict(
            "inconclusive",
            f"in state A the PF got only {a.pf} of {a.sent} test frames: the path from the sender "
            "loses frames, so fewer later would mean nothing",
        )
    lb = b.level(b.pf)
    if lb == "some":
        return Verdict(
            "inconclusive",
            f"in state B the PF got {b.pf} of {b.sent} test frames: the filter may have changed while "
            "frames were sent (a driver that programs it late or slowly); run again with a longer --settle",
        )
    steered = ""
    for c in counts:
        if c.state in ("B", "C", "D") and c.level(c.pf) == "none":
            steered = c.state
            break
    if lb == "none":
        return Verdict(
            "early",
            f"in state B ({STATE_TEXT['B']}) the PF got none of the {b.sent} test frames (it got "
            f"{a.pf} in state A): the NIC steers the MAC to the VF as soon as the host sets it, and "
            "frames for it are lost until a VF driver runs",
            steered_at="B",
        )
    where = {
        "C": "they moved to the VF once its driver was bound (state C)",
        "D": "they moved to the VF once it was up (state D)",
        "": "the PF kept getting them in every state measured",
    }[steered]
    return Verdict(
        "late",
        f"in state B ({STATE_TEXT['B']}) the PF still got {b.pf} of {b.sent} test frames: {where}",
        steered_at=steered,
    )
