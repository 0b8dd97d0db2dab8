"""A software model of an SR-IOV NIC in network namespaces, for guestfail-probe.

Three namespaces the test makes (`Model(prefix).create()`):

    <prefix>-w  (the wire)   tx0  the sender
                              |  veth
    <prefix>-n  (the NIC)    up0 -- esw (bridge: the NIC's embedded switch) -- pfb, vfb0, vfb1 ...
                                                                               |      |
                                                                        veth  pfl    |  veth
    <prefix>-h  (the host)   pf0 (macvlan passthru on pfl)                  pf0v0 ... (while "bound")

* The PF, pf0, is a passthru macvlan: it has a unicast filter
  (IFF_UNICAST_FLT), so the probe's test MAC on it does not make it
  promiscuous, as on a real NIC; every frame the switch gives pfb reaches it.
* A VF's netdev, pf0v<N>, lives in the host namespace while a driver is
  "bound" and in the NIC's namespace while not (unbind/bind move it).
* A VF's settings (its MAC, VLAN) are the ifalias of its switch port vfb<N>.
* Steering: the switch floods a MAC it has no entry for to every port; when
  the model "programs the VF's filter" it adds a static fdb entry
  MAC -> vfb<N>, and from then on the PF gets no frame for that MAC (and
  the VF only while its netdev is up, else the frames are lost, as on a real
  NIC whose VF has no driver).  The mode says when that entry appears:
  early: as soon as the VF's MAC is set; late: when a driver binds;
  shared: never (the switch keeps giving the PF the frames).

All of the model's state lives in the kernel (the bridge's ifalias holds the
mode), so `ModelControl` (guestfail.probe.control.Control) is stateless and
`ip -d link` / `bridge fdb` in the three namespaces show everything the probe
may change.  `python -m lab.sriov_model probe PREFIX -- <guestfail-probe
arguments>`, run in the host namespace (`ip netns exec <prefix>-h`), runs the
real guestfail-probe with this model as its control plane;
`python -m lab.sriov_model bench` prints what the probe says about each mode
and how long it takes (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Optional

from guestfail.core.errors import NotFound, SystemRefused
from guestfail.probe.facts import ZERO_MAC, Netdev, Nic, VfConfig, VfDevice, normalize_mac
from guestfail.probe.netlink import LinkEvents
from guestfail.probe.packet import in_netns
from guestfail.probe.sysfs import PciSysfs

MODES = ("early", "late", "shared")
PF = "pf0"
SENDER = "tx0"
VF_DRIVER = "gfmodel-vf"
PF_MAC = "02:00:00:00:aa:01"
SENDER_MAC = "02:00:00:00:aa:02"


def ip(*args: str, netns: str = "", check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemRefused(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def bridge(*args: str, netns: str, check: bool = True) -> str:
    argv = ["bridge", "-n", netns, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemRefused(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def parked_mac(index: int) -> str:
    """The MAC of a VF netdev while no driver is "bound" (it does not exist then)."""
    return f"02:00:00:00:bb:{index:02x}"


def _words(alias: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in alias.split() if "=" in w)


@dataclass(frozen=True)
class Model:
    prefix: str
    mode: str = "early"
    numvfs: int = 2
    #: VFs whose netdev starts in the host namespace ("bound")
    bound: tuple[int, ...] = (0,)
    pf_up: bool = True
    #: False: the sender's port leads nowhere (it has a link; its frames reach nothing)
    wire: bool = True
    #: True: binding a driver fails (an error mid-probe)
    fail_bind: bool = False

    @property
    def host(self) -> str:
        return f"{self.prefix}-h"

    @property
    def nic(self) -> str:
        return f"{self.prefix}-n"

    @property
    def wire_ns(self) -> str:
        return f"{self.prefix}-w"

    def alias(self) -> str:
        return f"gfmodel mode={self.mode} vfs={self.numvfs} fail_bind={int(self.fail_bind)}"

    def create(self) -> Model:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: one of {MODES}")
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def _create(self) -> None:
        h, n, w = self.host, self.nic, self.wire_ns
        for ns in (h, n, w):
            ip("netns", "add", ns)
        ip("link", "add", "esw", "type", "bridge", netns=n)
        ip("link", "set", "esw", "alias", self.alias(), "up", netns=n)
        ip("link", "add", "up0", "type", "veth", "peer", "name", SENDER, "netns", w, netns=n)
        if self.wire:
            ip("link", "set", "up0", "master", "esw", netns=n)
        # a cut wire still has a link at the sender: it leads nowhere
        ip("link", "set", "up0", "up", netns=n)
        ip("link", "set", SENDER, "address", SENDER_MAC, "up", netns=w)
        ip("link", "add", "pfb", "type", "veth", "peer", "name", "pfl", netns=n)
        ip("link", "set", "pfb", "master", "esw", "up", netns=n)
        ip("link", "set", "pfl", "address", PF_MAC, "up", netns=n)
        ip("link", "add", PF, "link", "pfl", "type", "macvlan", "mode", "passthru", netns=n)
        ip("link", "set", PF, "netns", h, netns=n)
        if self.pf_up:
            ip("link", "set", PF, "up", netns=h)
        for i in range(self.numvfs):
            vfb, vf = f"vfb{i}", f"{PF}v{i}"
            ip("link", "add", vfb, "type", "veth", "peer", "name", vf, netns=n)
            ip("link", "set", vfb, "master", "esw", "alias", f"mac={ZERO_MAC} vlan=0 qos=0", "up", netns=n)
            # no learning: only the model's own entries steer (a VF's IPv6
            # chatter must not move its MAC's frames behind the model's back)
            bridge("link", "set", "dev", vfb, "learning", "off", netns=n)
            ip("link", "set", vf, "address", parked_mac(i), netns=n)
            if i in self.bound:
                ip("link", "set", vf, "netns", h, netns=n)
        ip("link", "set", "lo", "up", netns=h)
        self.settle()

    def _unsettled(self) -> list[str]:
        """Host links whose operstate does not follow their flags yet."""
        out = []
        for link in json.loads(ip("-j", "link", "show", netns=self.host) or "[]"):
            flags = set(link.get("flags", []))
            if "LOOPBACK" in flags:
                continue
            want = "UP" if {"UP", "LOWER_UP"} <= flags else None if "UP" in flags else "DOWN"
            if want is not None and link.get("operstate") != want:
                out.append(f"{link.get('ifname')} {link.get('operstate')}")
        return out

    def settle(self, timeout: float = 10) -> None:
        """Wait until the kernel's linkwatch has given every host link the
        operstate its flags call for (it does so a moment after a change),
        so that a state taken now is not a passing one."""

        def body() -> bool:
            with LinkEvents() as events:
                return events.wait(lambda: not self._unsettled(), timeout)

        if not in_netns(self.host, body):
            raise SystemRefused(f"links in {self.host} do not settle: {self._unsettled()}")

    def destroy(self) -> None:
        for ns in (self.host, self.nic, self.wire_ns):
            ip("netns", "del", ns, check=False)

    def state(self) -> dict[str, Any]:
        """Everything the probe may change, for before/after comparisons:
        `ip -d link` in every namespace and the switch's static fdb."""
        out: dict[str, Any] = {}
        for ns in (self.host, self.nic, self.wire_ns):
            links = json.loads(ip("-d", "-j", "link", "show", netns=ns) or "[]")
            for link in links:
                _drop_timers(link)
                if ns != self.host:
                    # the switch side of a veth: its RFC 2863 state depends on
                    # the peer's history; its flags (UP, LOWER_UP) are compared
                    link.pop("operstate", None)
            out[ns] = sorted(links, key=lambda x: str(x.get("ifname")))
        fdb = json.loads(bridge("-j", "fdb", "show", "br", "esw", netns=self.nic) or "[]")
        out["fdb"] = sorted((e["mac"], e.get("ifname", "")) for e in fdb if e.get("state") == "static")
        return out


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two `Model.state()`s, one line per field ([]: equal)."""
    out: list[str] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(f"{path}.{k}", a.get(k), b.get(k))
        elif isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) for x in a + b):
            # links by name; anything else (a PF's VF list) by position
            named = all("ifname" in x for x in a + b)
            na = {str(x["ifname"]) if named else str(i): x for i, x in enumerate(a)}
            nb = {str(x["ifname"]) if named else str(i): x for i, x in enumerate(b)}
            for k in sorted(set(na) | set(nb)):
                walk(f"{path}[{k}]", na.get(k), nb.get(k))
        elif a != b and not (path.endswith(".qdisc") and a == "noop"):
            # a link that was up once keeps the default qdisc the kernel gave
            # it then (noop -> noqueue, mq): that cannot be undone, and is
            # documented in guestfail-probe(8)
            out.append(f"{path}: {a!r} -> {b!r}")

    walk("", before, after)
    return out


def _drop_timers(obj: Any) -> None:
    """Bridge timers tick: not state."""
    if isinstance(obj, dict):
        for k in [k for k in obj if k.endswith("_timer")]:
            del obj[k]
        for v in obj.values():
            _drop_timers(v)
    elif isinstance(obj, list):
        for v in obj:
            _drop_timers(v)


class ModelControl:
    """guestfail.probe.control.Control for a `Model` (run in its host namespace)."""

    def __init__(self, prefix: str) -> None:
        self.nic_ns = f"{prefix}-n"
        self.host_ns = f"{prefix}-h"
        self.sysfs = PciSysfs()

    def _esw(self) -> dict[str, str]:
        try:
            doc = json.loads(ip("-j", "link", "show", "esw", netns=self.nic_ns))
        except SystemRefused:
            raise NotFound(f"no software model in netns {self.nic_ns}") from None
        return _words(str(doc[0].get("ifalias", "")))

    def _numvfs(self) -> int:
        return int(self._esw().get("vfs", "0"))

    def _check(self, pf: str) -> None:
        if pf != PF or self.sysfs.netdev(pf) is None:
            raise NotFound(f"no interface {pf} (the model's PF is {PF})")

    def nic(self, pf: str) -> Nic:
        self._check(pf)
        esw = self._esw()
        n = int(esw.get("vfs", "0"))
        mode = esw.get("mode", "?")
        return Nic(
            model=f"guestfail software model ({mode})",
            driver="gfmodel",
            driver_version=f"mode={mode}",
            numvfs=n,
            totalvfs=n,
        )

    def vfs(self, pf: str) -> tuple[VfDevice, ...]:
        self._check(pf)
        out = []
        for i in range(self._numvfs()):
            nd = self.sysfs.netdev(f"{PF}v{i}")
            out.append(VfDevice(index=i, address=f"model:{i}", driver=VF_DRIVER if nd else "", netdev=nd))
        return tuple(out)

    def _config(self, i: int) -> VfConfig:
        doc = json.loads(ip("-j", "link", "show", f"vfb{i}", netns=self.nic_ns))
        w = _words(str(doc[0].get("ifalias", "")))
        return VfConfig(
            index=i, mac=w.get("mac", ZERO_MAC), vlan=int(w.get("vlan", "0")), qos=int(w.get("qos", "0"))
        )

    def configs(self, pf: str, pf_ifindex: int) -> tuple[VfConfig, ...]:
        self._check(pf)
        return tuple(self._config(i) for i in range(self._numvfs()))

    def set_vf(self, pf: str, pf_ifindex: int, index: int, mac: str, vlan: Optional[int], qos: int) -> None:
        self._check(pf)
        old = self._config(index)
        mac = normalize_mac(mac)
        v, q = (old.vlan, old.qos) if vlan is None else (vlan, qos)
        ip("link", "set", f"vfb{index}", "alias", f"mac={mac} vlan={v} qos={q}", netns=self.nic_ns)
        self.sync()

    def unbind(self, vf: VfDevice) -> None:
        name = f"{PF}v{vf.index}"
        if self.sysfs.netdev(name) is None:
            return
        ip("link", "set", name, "down")
        ip("link", "set", name, "netns", self.nic_ns)
        # without a driver there is no netdev: the parked one forgets its MAC
        ip("link", "set", name, "address", parked_mac(vf.index), netns=self.nic_ns)
        self.sync()

    def bind(self, vf: VfDevice, driver: str) -> None:
        if driver not in ("", VF_DRIVER):
            raise SystemRefused(f"bind VF {vf.index} to {driver}: the model has only {VF_DRIVER}")
        if self._esw().get("fail_bind") == "1":
            raise SystemRefused(f"bind VF {vf.index} to {VF_DRIVER}: failed (the model was told to fail)")
        name = f"{PF}v{vf.index}"
        if self.sysfs.netdev(name) is not None:
            return
        # like a VF driver starting: the MAC the PF set, else a random one
        mac = self._config(vf.index).mac
        if mac == ZERO_MAC:
            b = bytearray(os.urandom(6))
            b[0] = (b[0] & 0xFC) | 0x02
            mac = ":".join(f"{x:02x}" for x in b)
        ip("link", "set", name, "address", mac, netns=self.nic_ns)
        ip("link", "set", name, "netns", self.host_ns, netns=self.nic_ns)
        self.sync()

    def netdev(self, name: str) -> Optional[Netdev]:
        return self.sysfs.netdev(name)

    def settle(self) -> None:
        pass

    def sync(self) -> None:
        """The switch's static entries as the mode says, from the VFs' state."""
        esw = self._esw()
        mode = esw.get("mode", "early")
        fdb = json.loads(bridge("-j", "fdb", "show", "br", "esw", netns=self.nic_ns) or "[]")
        for e in fdb:
            if str(e.get("ifname", "")).startswith("vfb") and "static" in str(e.get("state", "")):
                bridge("fdb", "del", e["mac"], "dev", e["ifname"], "master", "static", netns=self.nic_ns)
        for i in range(int(esw.get("vfs", "0"))):
            cfg = self._config(i)
            if cfg.mac == ZERO_MAC:
                continue
            bound = self.sysfs.netdev(f"{PF}v{i}") is not None
            if mode == "early" or (mode == "late" and bound):
                bridge("fdb", "replace", cfg.mac, "dev", f"vfb{i}", "master", "static", netns=self.nic_ns)


def bench(reps: int = 3) -> int:
    """Run guestfail-probe (its defaults) against each mode of the model
    `reps` times; print the verdicts, the counts and how long a probe takes."""
    import statistics
    import uuid

    cols = ("model", "VF", "exit", "verdict", "steered at", "on the PF in A B C D (on the VF)", "seconds")
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|")
    for mode, vf, bound in (("early", 1, ()), ("late", 0, (0,)), ("shared", 1, ())):
        secs: list[float] = []
        doc: dict[str, Any] = {}
        rc = 0
        for _ in range(reps):
            m = Model(f"gb{uuid.uuid4().hex[:6]}", mode=mode, bound=bound).create()
            try:
                argv = ["ip", "netns", "exec", m.host, sys.executable, "-m", "lab.sriov_model", "probe"]
                argv += [m.prefix, "--", "--pf", PF, "--vf", str(vf), "--json", "-q"]
                argv += ["--sender-netns", f"{m.wire_ns}:{SENDER}"]
                proc = subprocess.run(argv, capture_output=True, text=True, check=False)
                rc = proc.returncode
                doc = json.loads(proc.stdout)
                secs.append(float(doc["seconds"]))
            finally:
                m.destroy()
        counts = " ".join(
            f"{s['pf']}" + (f" ({s['vf']})" if s["vf"] is not None else "") for s in doc.get("states", [])
        )
        v = doc.get("verdict", {})
        runs = ", ".join(map(str, secs))
        print(
            f"| {mode} | {vf} ({'bound' if bound else 'no driver'}) | {rc} | {v.get('kind')} | "
            f"{v.get('steered_at') or 'never'} | {counts} | {statistics.median(secs):.1f} ({runs}) |"
        )
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        return bench(int(argv[1]) if len(argv) > 1 else 3)
    if len(argv) < 2 or argv[0] != "probe":
        print(
            "usage: python -m lab.sriov_model probe PREFIX -- <guestfail-probe arguments>\n"
            "       python -m lab.sriov_model bench [REPS]",
            file=sys.stderr,
        )
        return 2
    prefix = argv[1]
    rest = argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    from guestfail.probe import cli

    return cli.main(rest, control=lambda links: ModelControl(prefix))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
