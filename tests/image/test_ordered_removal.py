"""Issue 13 in the image tier: the attention button under the shipped unit's
sandbox (CAP_SYSLOG, /dev/kmsg alone and read-only in its private /dev).

One boot of Debian 12 (systemd 252, the oldest systemd guestfail's unit
meets) with the package installed and the VF present at boot, native PCIe
hot-plug: guestfail.service, started by systemd, watches the kernel's log;
QEMU's device_del presses the VF slot's attention button, the pair moves to
its standby at once, and nothing the lab's peer sends from device_del to
DEVICE_DELETED is lost.  The service's sandbox is checked as it runs: no
/proc/kmsg, the log read-only, CAP_SYSLOG in its bounding set."""

from __future__ import annotations

import json
from typing import Any

from lab.debs import Debs

from . import flavours
from .conftest import build_image
from .helpers import (
    NPF,
    NSBY,
    SBY,
    dhcp_server,
    ns,
    replies_on,
    stream_start,
    stream_stop,
    topology,
    wait_active,
    wait_address,
)


def test_the_attention_button_moves_the_pair_under_the_shipped_unit(boot: Any, debs: Debs) -> None:
    img = build_image(debs, flavours.stack("debian12", "ifupdown"))
    servers: list[Any] = []
    b = boot(img, topology(vf_at_boot=True), before_start=lambda lab: servers.append(dhcp_server(lab)))
    lab = b.lab
    wait_active(lab, SBY, NPF)
    wait_address(lab, SBY)

    # the sandbox as systemd set it up for the daemon
    pid = lab.run("systemctl", "show", "-p", "MainPID", "--value", "guestfail.service").out.strip()
    probe = lab.run("nsenter", "-t", pid, "-m", "sh", "-c", "ls /dev; cat /proc/self/mountinfo", check=False)
    devices = probe.out.split()
    assert "kmsg" in devices and "vda" not in devices, probe.out + probe.err  # PrivateDevices, with /dev/kmsg
    mounts = {x.split()[4]: x.split() for x in probe.out.splitlines() if len(x.split()) > 5}
    assert "ro" in mounts["/dev/kmsg"][5].split(","), mounts["/dev/kmsg"]  # read-only
    assert mounts["/proc/kmsg"][3] == "/systemd/inaccessible/reg", mounts["/proc/kmsg"]  # hidden
    caps = lab.run("grep", "CapBnd", f"/proc/{pid}/status").out.split()[1]
    assert int(caps, 16) & (1 << 34), f"CAP_SYSLOG not in the bounding set: {caps}"  # CAP_SYSLOG = 34
    doc = json.loads(lab.read_file("/run/guestfail/state.json") or "{}")
    assert doc["daemon"]["attention_button"] == "watched (/dev/kmsg)", doc["daemon"]

    stream = stream_start(lab, 1000)
    replies_on(lab, stream, "vf0", 200)
    t0 = ns()
    lab.unplug("vf0")  # device_del: the attention button; DEVICE_DELETED 5 s later
    t1 = ns()
    replies_on(lab, stream, "sb0", 200)
    report = stream_stop(lab, stream)
    window = report.window(t0, t1)
    lost = [(round((r.send_ns - t0) / 1e6), r.sent_path) for r in window.records if r.recv_ns is None]
    assert window.sent > 4000 and window.lost == 0, f"{window.sent} sent, lost (ms, path): {lost}"
    doc = json.loads(lab.read_file("/run/guestfail/state.json") or "{}")
    (pair,) = doc["pairs"]
    moved = [s for s in pair["history"] if s["reason"] == "attention button on slot 5001"]
    assert moved and (moved[-1]["from"], moved[-1]["to"]) == (NPF, NSBY), pair["history"]
    journal = lab.journal("-u", "guestfail.service", "-o", "cat")
    assert "attention button on slot 5001: " in journal, journal[-2000:]
