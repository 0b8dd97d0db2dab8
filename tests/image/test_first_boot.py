"""Issue 11.3 (cold plug) and 11.4 (cloud-init), and the ordering cycle.

One boot per distribution of a fresh instance: the standby and the VF both
present at boot, Debian's ifupdown + isc-dhcp-client, the packages installed,
and a NoCloud seed (a `cidata` ISO made with genisoimage) whose user-data
configures guestfail the way that cloud-init version supports:

* Debian 12, cloud-init 22.4: a `guestfail:` key (guestfail-cloud-init's
  module writes the file and restarts the service);
* Debian 13, cloud-init 25.x: `write_files` + `runcmd` (unknown keys in
  user-data make 25.x report degraded; see guestfail(8), CLOUD-INIT).

The image's own configuration turns the bond's peer notification off
(`num_peer_notif = 0`), so an announcement after a switch is guestfail's own.

Asserted: guestfail paired before network-online.target (in the journal),
the address from DHCP is on the master (through the VF), cloud-init's stages
all ran (no job dropped for an ordering cycle) and `cloud-init status --long`
says done, not degraded, with no schema warning; the configuration written,
the service restarted and the pair kept; a switch announces the address that
DHCP gave the master after pairing.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import image
from lab.debs import Debs
from lab.dhcp import DhcpEvent, DhcpServer

from . import flavours
from .conftest import SHARED, Boot, build_image, record, start
from .helpers import (
    GUEST_IP,
    NPF,
    NSBY,
    SBY,
    boot_checks,
    chain_seconds,
    dhcp_server,
    ipv4,
    kind,
    ns,
    topology,
    wait_ack,
    wait_active,
    wait_address,
    wait_peer,
)

USER_DATA = {
    # cloud-init 22.4: the module's key
    "debian12": """\
#cloud-config
guestfail:
  bond:
    num_peer_notif: 0
    miimon: 100
""",
    # cloud-init 25.x: what guestfail(8) documents for 23.4 and later
    "debian13": """\
#cloud-config
write_files:
  - path: /etc/guestfail/guestfail.toml
    content: |
      # from user-data
      [bond]
      num_peer_notif = 0
      miimon = 100
runcmd:
  - [systemctl, restart, guestfail.service]
""",
}


def make_seed(dest: Path, user_data: str) -> Path:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "user-data").write_text(user_data)
        (Path(d) / "meta-data").write_text("instance-id: iid-guestfail-lab-1\nlocal-hostname: guest\n")
        subprocess.run(
            ["genisoimage", "-quiet", "-output", str(dest), "-volid", "cidata", "-joliet", "-rock",
             str(Path(d) / "user-data"), str(Path(d) / "meta-data")],
            check=True,
        )  # fmt: skip
    return dest


@dataclass
class FirstBoot:
    boot: Boot
    dhcp: DhcpServer
    first_ack: DhcpEvent
    journal: str
    checks: dict[str, str]
    facts: dict[str, Any] = field(default_factory=dict)


def monotonic_of(journal: str, pattern: str) -> float:
    """The monotonic time of the first journal line matching `pattern` (-1 if none)."""
    rx = re.compile(pattern)
    for line in journal.splitlines():
        m = re.match(r"\[\s*([0-9.]+)\]", line)
        if m and rx.search(line):
            return float(m.group(1))
    return -1.0


@pytest.fixture(scope="module", params=sorted(image.SUITES))
def first_boot(
    request: pytest.FixtureRequest, debs: Debs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FirstBoot]:
    distro = request.param
    img = build_image(debs, flavours.first_boot(distro))
    seed = make_seed(tmp_path_factory.mktemp("seed") / "seed.iso", USER_DATA[distro])
    servers: list[DhcpServer] = []
    b = start(
        img, topology(vf_at_boot=True), seed=seed, before_start=lambda lab: servers.append(dhcp_server(lab))
    )
    SHARED.append(b)
    try:
        lab = b.lab
        # cloud-init's last stage, then the module's (or runcmd's) restart of guestfail
        lab.run("cloud-init", "status", "--wait", check=False, timeout=300)
        lab.run("systemctl", "is-system-running", "--wait", check=False, timeout=120)
        b.mark("cloud-init done")
        first = wait_ack(lab, servers[0], 0)
        checks = boot_checks(lab)
        journal = lab.journal("-o", "short-monotonic")
        yield FirstBoot(b, servers[0], first, journal, checks)
        record({"kind": "first-boot", "flavour": img.flavour.name, "marks": b.marks,
                "network_online_s": chain_seconds(checks["critical_chain"], "network-online.target"),
                "critical_chain": checks["critical_chain"], "time": checks["time"]})  # fmt: skip
    finally:
        SHARED.remove(b)
        b.lab.close()


def test_paired_before_network_online_with_the_dhcp_address_on_the_master(first_boot: FirstBoot) -> None:
    fb, lab = first_boot, first_boot.boot.lab
    ready = monotonic_of(fb.journal, r"guestfail\S*daemon: guestfail \S+ ready: 1 pairs")
    online = monotonic_of(fb.journal, r"Reached target network-online\.target")
    assert ready > 0, "guestfail never said it was ready with one pair"
    assert online > 0, "network-online.target was never reached"
    assert ready < online, f"paired at {ready} s, network-online.target at {online} s"
    # ifupdown ran DHCP on the master from the start: the first lease went out over the VF
    assert (fb.first_ack.yiaddr, fb.first_ack.path) == (GUEST_IP, "vf0")
    assert kind(lab, SBY) == "bond"
    wait_active(lab, SBY, NPF)
    wait_address(lab, SBY)
    assert ipv4(lab, NSBY) == [] and ipv4(lab, NPF) == []


def test_cloud_init_ran_every_stage_and_is_done_not_degraded(first_boot: FirstBoot) -> None:
    lab = first_boot.boot.lab
    # every cloud-init stage ran: none was dropped to break an ordering cycle
    network_stage = "cloud-init-network.service" if lab.run(
        "systemctl", "cat", "cloud-init-network.service", check=False
    ).rc == 0 else "cloud-init.service"  # fmt: skip
    for unit in ("cloud-init-local.service", network_stage, "cloud-config.service", "cloud-final.service"):
        shown = lab.run("systemctl", "show", "-p", "ActiveState", "-p", "Result", unit).out
        state = dict(line.split("=", 1) for line in shown.split())
        assert state == {"ActiveState": "active", "Result": "success"}, (unit, state)
    r = lab.run("cloud-init", "status", "--long", check=False)
    assert r.rc == 0, r.out + r.err  # 2 would be degraded, 1 an error
    assert "status: done" in r.out, r.out
    assert "degraded" not in r.out and "schema" not in r.out.lower(), r.out
    doc = json.loads(lab.run("cloud-init", "status", "--format", "json").out)
    assert doc.get("errors", []) == [], doc
    assert not doc.get("recoverable_errors"), doc  # 24.1+: warnings make it degraded
    assert doc.get("extended_status", "done") == "done", doc
    log = lab.read_file("/var/log/cloud-init.log") or ""
    assert "schema" not in " ".join(x for x in log.splitlines() if "WARNING" in x), "a schema warning"
    # 25.x would log these for a module written for 22.4: a `log` argument, get_meta_doc()
    for text in ("Config modules with a `log` parameter", "get_meta_doc"):
        assert text not in log, [x for x in log.splitlines() if text in x]


def test_user_data_configured_guestfail_and_the_pair_stayed(first_boot: FirstBoot) -> None:
    lab, distro = first_boot.boot.lab, first_boot.boot.lab.image.flavour.distro
    text = lab.read_file("/etc/guestfail/guestfail.toml") or ""
    marker = "Written by cloud-init" if distro == "debian12" else "# from user-data"
    assert marker in text and "miimon = 100" in text, text
    starts = [x for x in first_boot.journal.splitlines() if "daemon: guestfail" in x and " ready: " in x]
    assert len(starts) >= 2, starts  # started at boot, restarted with the new configuration
    assert all("1 pairs" in x for x in starts), starts
    assert lab.run("systemctl", "is-active", "guestfail.service").out.strip() == "active"
    if distro == "debian12":  # the module's own unit ran it
        state = lab.run("systemctl", "show", "-p", "Result", "--value", "guestfail-cloud-init.service").out
        assert state.strip() == "success"


def test_a_switch_announces_the_address_dhcp_gave_after_pairing(first_boot: FirstBoot) -> None:
    lab = first_boot.boot.lab
    # cloud-init restarted guestfail after the first lease, so its last
    # reconciliation saw the address: ifupdown takes the master down and up
    # again (released, a new lease), which adds the address once more
    t0 = ns()
    lab.run("systemctl", "restart", f"ifup@{SBY}.service", timeout=120)
    wait_ack(lab, first_boot.dhcp, t0)
    wait_address(lab, SBY)
    t = ns()
    lab.set_link("vf0", up=False)
    try:
        wait_active(lab, SBY, NSBY)
        wait_peer(
            lab,
            lambda p: any(a.ip == GUEST_IP and a.t_ns >= t for a in p.announcements["sb0"]),
            15,
            f"an announcement of {GUEST_IP} over sb0 after the switch",
        )
    finally:
        lab.set_link("vf0", up=True)
