"""Issue 11.5: the package's life on a running guest, with traffic flowing.

One boot per distribution of an image without the package (its dependencies
are there, as on any Debian guest; the .debs lie in /root/debs), with
systemd-networkd configuring the standby by name and an admin's
/etc/guestfail/guestfail.toml choosing the team backend.  The lab's peer
streams 200 packets/s throughout.  The boot's critical chain is the
"without the package" row of BENCHMARKS.md (the networkd stack boot has it
with).

* the VF hot-plugged, then `apt install ./guestfail_*.deb`: paired, the
  address on the master;
* `systemctl restart guestfail`: the pair stays, teamd is the same process
  (KillMode=process), nothing lost;
* `apt install` of a newer build: the same;
* `apt remove guestfail`: released: the standby has its name, address and
  default route back, traffic continues over it, networkd renews its lease
  (the release has udev look at the standby again, so networkd matches it to
  the user's .network file), and the service is not started again;
* `apt purge guestfail`: none of the package's files, units, processes or
  masters is left.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab import image
from lab.debs import Debs

from . import flavours
from .conftest import build_image, record
from .helpers import (
    GUEST_IP,
    LEASE,
    NPF,
    SBY,
    boot_checks,
    chain_seconds,
    dhcp_server,
    ipv4,
    kind,
    ns,
    replies_on,
    stream_start,
    stream_stop,
    topology,
    wait_ack,
    wait_address,
)

ADMIN_CONFIG = '[agent]\nbackend = "team"\n'


def apt(lab: Any, *args: str) -> str:
    r = lab.run(
        "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", "--no-install-recommends", *args,
        check=False, timeout=600,
    )  # fmt: skip
    assert r.rc == 0, f"apt-get {' '.join(args)}:\n{r.out}\n{r.err}"
    return str(r.out)


def teamd_pid(lab: Any) -> int:
    return int((lab.read_file(f"/run/teamd/{SBY}.pid") or "0").split()[0])


def wait_team_active(lab: Any, port: str, timeout: float = 120) -> None:
    lab.wait_net([{"team_active": SBY, "eq": port}], timeout=timeout, what=f"{port} active in {SBY}")


def wait_service_ready(lab: Any) -> None:
    # Type=notify: `systemctl restart` returns once the daemon said READY=1
    assert lab.run("systemctl", "is-active", "guestfail.service").out.strip() == "active"


@pytest.mark.parametrize("distro", sorted(image.SUITES))
def test_install_restart_upgrade_remove_purge(boot: Any, debs: Debs, distro: str) -> None:
    img = build_image(debs, flavours.package_life(distro))
    servers: list[Any] = []
    b = boot(img, topology(), before_start=lambda lab: servers.append(dhcp_server(lab)))
    lab, dhcp = b.lab, servers[0]
    checks = boot_checks(lab)
    assert lab.run("dpkg-query", "-W", "guestfail", check=False).rc != 0  # not installed
    wait_ack(lab, dhcp, 0)
    wait_address(lab, SBY)
    stream = stream_start(lab)
    replies_on(lab, stream, "sb0", 50)
    lab.plug("vf0")
    b.mark("VF present")

    # install: the service starts and pairs, under the team backend
    current, upgrade = debs.names(debs.current), debs.names(debs.upgrade)
    main_deb = next(n for n in current if n.startswith("guestfail_"))
    apt(lab, "install", f"/root/debs/{main_deb}")
    wait_team_active(lab, NPF)
    wait_address(lab, SBY)
    assert kind(lab, SBY) == "team"
    replies_on(lab, stream, "vf0", 100)
    b.mark("installed and paired")
    pid = teamd_pid(lab)
    assert pid > 0

    # restart: nothing lost, the same teamd
    t0 = ns()
    lab.run("systemctl", "restart", "guestfail.service", timeout=300)
    wait_service_ready(lab)
    t1 = ns()
    replies_on(lab, stream, "vf0", 100)  # what was sent before t1 had time to come back
    restart = stream.report().window(t0, t1)
    assert teamd_pid(lab) == pid, "teamd was restarted with the service"
    assert restart.lost == 0, restart
    journal = lab.journal("-u", "guestfail.service", "-o", "cat")
    b.mark("restarted")

    # upgrade to a newer build: the same
    t0 = ns()
    next_deb = next(n for n in upgrade if n.startswith("guestfail_"))
    apt(lab, "install", f"/root/debs/{next_deb}")
    version = lab.run("dpkg-query", "-W", "-f", "${Version}", "guestfail").out
    assert version == debs.upgrade_version
    wait_service_ready(lab)
    t1 = ns()
    replies_on(lab, stream, "vf0", 100)
    upgraded = stream.report().window(t0, t1)
    assert teamd_pid(lab) == pid, "teamd was restarted by the upgrade"
    assert upgraded.lost == 0, upgraded
    b.mark("upgraded")

    # remove: released, traffic continues over the standby, and networkd
    # keeps its lease under its own name (renewals over sb0)
    files = lab.run("dpkg", "-L", "guestfail").out.split()
    cursor = lab.run("journalctl", "-n0", "--show-cursor", "-q").out.split("cursor: ", 1)[1].strip()
    apt(lab, "remove", "guestfail")
    t_removed = ns()
    assert kind(lab, SBY) == "", "the standby has its name back, no master"
    wait_address(lab, SBY)
    routes = json.loads(lab.run("ip", "-j", "route", "show", "default").out)
    assert routes and {(r["dev"], r.get("gateway")) for r in routes} == {(SBY, "192.0.2.1")}, routes
    replies_on(lab, stream, "sb0", 100)
    renewal = wait_ack(lab, dhcp, t_removed, timeout=LEASE * 2)
    assert renewal.path == "sb0", renewal
    # the release's renames did not start the service again (the udev rule's
    # want of a claimed VF)
    after = lab.journal("--after-cursor", cursor, "-u", "guestfail.service", "-o", "cat")
    assert "Starting guestfail.service" not in after and "Failed to start" not in after, after
    b.mark("removed")

    # purge: nothing of the package left
    apt(lab, "purge", "guestfail")
    left = [
        f
        for f in files
        if f.startswith(("/usr/", "/lib/", "/etc/")) and lab.run("test", "-f", f, check=False).rc == 0
    ]
    assert left == [], left
    # systemctl exits 1 when no unit file matches: what is listed is the answer
    units = lab.run("systemctl", "list-unit-files", "guestfail*", "--no-legend", check=False)
    assert units.out.strip() == "", units
    assert lab.run("pgrep", "-x", "teamd", check=False).rc != 0, "a teamd is left"
    assert lab.run("pgrep", "-x", "guestfail", check=False).rc != 0, "a guestfail process is left"
    assert not [n for n, e in lab.links().items() if str(e.get("ifalias", "")).startswith("guestfail:")]
    assert lab.run("test", "-e", "/run/guestfail", check=False).rc != 0, "/run/guestfail is left"
    report = stream_stop(lab, stream)
    assert ipv4(lab, SBY) == [GUEST_IP]

    record(
        {
            "kind": "package-life",
            "flavour": img.flavour.name,
            "marks": b.marks,
            "restart_lost": restart.lost,
            "upgrade_lost": upgraded.lost,
            "stream": {"sent": report.sent, "lost": report.lost},
            "network_online_s": chain_seconds(checks["critical_chain"], "network-online.target"),
            "critical_chain": checks["critical_chain"],
            "time": checks["time"],
            "restart_journal_warnings": [x for x in journal.splitlines() if "left-over" in x],
        }
    )
