"""What the image tests share: the topology, the DHCP server, the checks every
boot must pass, and waits on the guest and the lab's peer."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from lab import image
from lab.dhcp import DhcpEvent, DhcpServer
from lab.imagelab import ImageLab
from lab.topology import SBY_MAC, Topology, basic

GUEST_IP = "192.0.2.2"
SBY = image.STANDBY
NSBY, NPF = f"{SBY}nsby", f"{SBY}npf"
LEASE = 20  # seconds: renewals every 10 s
GUESTFAIL_UNITS = ("guestfail.service", "guestfail-cloud-init.service")


def ns() -> int:
    return time.monotonic_ns()


def topology(*, vf_at_boot: bool = False) -> Topology:
    """The standby in slot 11 (named ens11 by udev, as lab.image's configs
    expect), the VF (vmxnet3, the standby's MAC) in slot 5001, a spare slot;
    native PCIe hot-plug, so slots carry their numbers as on Hyper-V."""
    assert image.STANDBY_MAC == SBY_MAC
    return basic(with_other=False, hotplug="native", vf_model="vmxnet3", vf_at_boot=vf_at_boot)


def dhcp_server(lab: ImageLab) -> DhcpServer:
    return DhcpServer(lab.peer, lease_seconds=LEASE).attach()


def wait_ack(
    lab: ImageLab, dhcp: DhcpServer, after: int, kind: str = "any", timeout: float = 90
) -> DhcpEvent:
    return lab.on_loop(dhcp.wait_for_ack(SBY_MAC, after_ns=after, kind=kind, timeout=timeout), timeout + 10)


def wait_peer(lab: ImageLab, pred: Callable[[Any], bool], timeout: float, what: str) -> None:
    lab.on_loop(lab.peer.wait_for(pred, timeout, what), timeout + 10)


def wait_address(lab: ImageLab, name: str, timeout: float = 90) -> None:
    lab.wait_net(
        [{"link": name, "attr": "inet", "has": GUEST_IP}], timeout=timeout, what=f"{GUEST_IP} on {name}"
    )


def wait_active(lab: ImageLab, master: str, member: str, timeout: float = 120) -> None:
    lab.wait_net(
        [{"link": master, "attr": "active_slave", "eq": member}], timeout=timeout, what=f"{member} active"
    )


def link(lab: ImageLab, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(lab.run("ip", "-j", "-d", "addr", "show", "dev", name).out)[0]
    return entry


def kind(lab: ImageLab, name: str) -> str:
    return str(link(lab, name).get("linkinfo", {}).get("info_kind", ""))


def ipv4(lab: ImageLab, name: str) -> list[str]:
    return [a["local"] for a in link(lab, name).get("addr_info", []) if a.get("family") == "inet"]


def stream_start(lab: ImageLab, rate: float = 200) -> Any:
    async def start() -> Any:
        return lab.peer.start_stream(rate)

    return lab.on_loop(start(), 10)


def stream_stop(lab: ImageLab, stream: Any) -> Any:
    return lab.on_loop(lab.peer.stop_stream(stream, 1.0), 40)


def replies_on(lab: ImageLab, stream: Any, path: str, n: int, timeout: float = 60) -> None:
    base: int = stream.report().replies_per_path.get(path, 0)
    wait_peer(
        lab,
        lambda _p: stream.report().replies_per_path.get(path, 0) >= base + n,
        timeout,
        f"{n} replies over {path}",
    )


def boot_checks(lab: ImageLab) -> dict[str, str]:
    """What every boot must show: no failed unit, no ordering cycle in the
    journal, the installed units verify.  Returns the critical chain to
    network-online.target (systemd-analyze) for the record."""
    failed = lab.run("systemctl", "--failed", "--no-legend", "--plain").out.strip()
    assert failed == "", f"failed units:\n{failed}"
    journal = lab.journal("-o", "cat")
    cycles = [x for x in journal.splitlines() if "ordering cycle" in x or "deleted to break" in x]
    assert cycles == [], "\n".join(cycles)
    units = [u for u in GUESTFAIL_UNITS if lab.run("systemctl", "cat", u, check=False).rc == 0]
    if units:
        # --man=no: the image has no man pages (Documentation= is checked by the package tests)
        verify = lab.run("systemd-analyze", "verify", "--man=no", *units, check=False, timeout=120)
        assert verify.rc == 0 and verify.err.strip() == "", verify.err
    chain = lab.run("systemd-analyze", "critical-chain", "network-online.target", check=False, timeout=120)
    blame = lab.run("systemd-analyze", "time", check=False, timeout=60)
    return {"critical_chain": chain.out, "time": blame.out.strip()}


def chain_seconds(chain: str, unit: str) -> float:
    """When `unit` became active in a critical-chain listing (seconds), or -1."""
    for line in chain.splitlines():
        text = line.strip("└─├│ ")
        if text.startswith(unit + " @"):
            at = text.split("@", 1)[1].split()[0]
            return parse_span(at)
    return -1.0


def parse_span(text: str) -> float:
    """systemd's time span ("1min 2.5s", "18.1s", "350ms") in seconds."""
    total = 0.0
    for part in text.split():
        if part.endswith("ms"):
            total += float(part[:-2]) / 1000
        elif part.endswith("min"):
            total += float(part[:-3]) * 60
        elif part.endswith("s"):
            total += float(part[:-1])
    return total
