"""Issue 12: a live migration with a VF, orchestrated as a management layer
does it (lab.orchestrator), with guestfail in the guest.

One guest (Debian 12, systemd-networkd as shipped, the .deb installed, DHCP
from the lab) and one migration: the source QEMU it booted in and a
destination QEMU started with `-incoming`, the guest's disk shared by both,
migrated over a unix socket.  While the lab's peer streams 200 packets/s at
the guest, the orchestrator asks guestfail to move the pair off the VF
(`guestfail prepare-unplug` through qemu-guest-agent's guest-exec), removes
the VF (device_del, DEVICE_DELETED), migrates, adds a VF at the destination
(same MAC, another slot) and waits until the peer sees the guest's frames
over it, then asks `guestfail status` through the agent until it says
healthy.

Asserted: nothing lost while the VF is taken away; QEMU's events of every
step on both hosts (DEVICE_DELETED at the source, the migration completed
there, RESUME at the destination); the peer learned the guest's new paths
by itself (nobody told it the guest moved); after the replug the pair is
healthy on the new VF, under the standby's name with its address, and the
traffic runs over the destination's VF.
"""

from __future__ import annotations

import json
from typing import Any

from lab import orchestrator
from lab.debs import Debs
from lab.topology import root_port_address

from . import flavours
from .conftest import build_image, record
from .helpers import (
    GUEST_IP,
    NPF,
    NSBY,
    SBY,
    dhcp_server,
    ipv4,
    ns,
    replies_on,
    stream_start,
    stream_stop,
    topology,
    wait_active,
    wait_address,
)

PLAN = orchestrator.Plan(
    vf="vf0",
    dest_port="p3",
    prepare=("/usr/bin/guestfail", "prepare-unplug", "{name}"),
    confirm=("/usr/bin/guestfail", "status"),
)


def test_orchestrated_migration_keeps_the_pair(boot: Any, debs: Debs) -> None:
    img = build_image(debs, flavours.stack("debian12", "networkd"))
    servers: list[Any] = []
    b = boot(img, topology(), before_start=lambda lab: servers.append(dhcp_server(lab)))
    lab = b.lab
    wait_address(lab, SBY)
    lab.plug("vf0", wait=False)
    wait_active(lab, SBY, NPF)
    wait_address(lab, SBY)
    b.mark("paired")

    stream = stream_start(lab, 200)
    replies_on(lab, stream, "vf0", 100)
    rec = orchestrator.migrate(lab, PLAN)
    b.mark("migrated")
    assert rec.ok, "\n".join([rec.error, *rec.timeline()])
    dest = lab.current
    assert (rec.source, rec.destination, dest.name) == ("h0", "h1", "h1")
    replies_on(lab, stream, dest.paths["vf0"], 100)
    report = stream_stop(lab, stream)
    timeline = "\n".join(rec.timeline())

    # every step, in order, with QEMU's word for it on the host it ran on
    assert [s.name for s in rec.steps] == ["prepare", "unplug", "migrate", "plug", "carries", "confirm"]
    assert all(s.ok for s in rec.steps), timeline
    assert rec.step("prepare").detail["rc"] == 0  # type: ignore[union-attr]
    seen = {(e.host, e.name, e.data.get("status") or e.data.get("device") or "") for e in rec.events}
    for want in (("h0", "DEVICE_DELETED", "vf0"), ("h0", "MIGRATION", "completed"), ("h1", "RESUME", "")):
        assert want in seen, f"no {want}:\n{timeline}"
    assert rec.migration["status"] == "completed"
    assert rec.t_start_ns < rec.t_unplugged_ns < rec.t_resumed_ns < rec.t_plugged_ns < rec.t_carries_ns

    # nothing lost while the VF was taken away: guestfail had moved the
    # traffic to the standby before the device_del
    unplug = report.window(rec.t_start_ns, rec.t_unplugged_ns)
    assert unplug.sent > 0 and unplug.lost == 0, unplug.as_dict()
    migration = report.window(rec.t_unplugged_ns, rec.t_resumed_ns)
    replug = report.window(rec.t_resumed_ns, rec.t_carries_ns)
    after = report.window(rec.t_carries_ns, report.end_ns)
    # at the destination, until the guest sent over its new VF, the standby
    # carried the stream (the guest runs there: its replies came over the
    # destination's standby path)
    assert replug.replies_per_path.get("sb0@h1", 0) > 0, replug.as_dict()
    carries = rec.step("carries")
    assert carries is not None
    assert carries.detail["first_kind"] not in ("", "rarp"), carries.detail

    # the peer learned where the guest went from its frames alone: from the
    # source's VF to the standby (guestfail's switch), to the destination's
    # standby (QEMU's announcement or the guest's next frame), to the new VF
    mine = [m for m in lab.peer.moves if m.mac == lab.topo.nic("vf0").mac and m.t_ns >= rec.t_start_ns]
    moves = [(m.from_path, m.to_path) for m in mine]
    assert moves[0] == ("vf0", "sb0") and mine[0].t_ns < rec.t_unplugged_ns, mine
    assert mine[0].kind != "rarp", mine  # the guest's frame: QEMU announces nothing at the source
    assert ("sb0", "sb0@h1") in moves, moves
    assert moves[-1] == ("sb0@h1", "vf0@h1"), moves

    # healthy on the new VF, under the standby's name, with its address
    wait_active(lab, SBY, NPF)
    assert ipv4(lab, SBY) == [GUEST_IP]
    assert ipv4(lab, NSBY) == [] and ipv4(lab, NPF) == []
    status = json.loads(lab.run("guestfail", "status", "--json").out)
    pair = next(p for p in status["pairs"] if p["master"] == SBY)
    assert (pair["state"], pair["active"], pair["drained"]) == ("healthy", NPF, False), pair
    # ... and that VF is the destination's, in the other slot (p3's root port)
    dev, fn = root_port_address([p.id for p in lab.topo.ports].index(PLAN.dest_port))
    vf_pci = lab.run("readlink", "-f", f"/sys/class/net/{NPF}/device").out.strip()
    assert vf_pci.startswith(f"/sys/devices/pci0000:00/0000:00:{dev:02x}.{fn:x}/"), vf_pci

    record(
        {
            "kind": "migration",
            "flavour": img.flavour.name,
            "marks": b.marks,
            "steps_ms": {s.name: round(s.ms) for s in rec.steps},
            "migration": {k: rec.migration.get(k) for k in ("total-time", "downtime", "setup-time")},
            "lost": {
                "unplug": unplug.lost,
                "migration": migration.lost,
                "replug": replug.lost,
                "after": after.lost,
                "total": report.lost,
                "sent": report.sent,
            },
            "carries": carries.detail,
            "moves": [(round((m.t_ns - rec.t_start_ns) / 1e6), m.from_path, m.to_path, m.kind) for m in mine],
            "timeline": rec.timeline(),
            "t": ns(),
        }
    )
