"""Record the netlink dumps the unit tests replay (tests/data/*.bin).

They come from the lab's real guest kernel (Debian 6.1, bonding, virtio-net,
e1000, QEMU's failover).  Run again after changing what the tests need:

    .venv/bin/python -m tests.data.record_dumps
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from lab import topology
from lab.vm import Lab

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def save(lab: Lab, name: str) -> None:
    for what in ("link", "addr"):
        raw = base64.b64decode(lab.request("netlink_dump", what=what)["b64"])
        (HERE / f"{name}.{what}.bin").write_bytes(raw)
        print(f"{name}.{what}.bin: {len(raw)} bytes")


def main() -> int:
    agent = [sys.executable, "-m", "guestfail", "run", "--no-dbus"]
    env = {"PYTHONPATH": str(REPO)}
    with Lab(topology.basic(), name="record") as lab:
        sby = lab.ifname("sb0")
        lab.run("ip", "link", "set", sby, "up")
        lab.run("ip", "addr", "add", "192.0.2.2/24", "dev", sby)
        lab.plug("vf0")
        save(lab, "unpaired")
        lab.spawn("agent", agent, env=env, notify=True)
        lab.wait_notify("agent")
        lab.wait_net([{"link": sby, "attr": "active_slave", "eq": f"{sby}npf"}], timeout=60)
        save(lab, "paired")
        lab.set_link("vf0", False)
        lab.wait_net([{"link": sby, "attr": "active_slave", "eq": f"{sby}nsby"}], timeout=60)
        save(lab, "vf-down")
    with Lab(topology.basic(qemu_failover=True), name="record") as lab:
        lab.plug("vf0", wait=False)
        lab.wait_qmp_event("FAILOVER_NEGOTIATED", timeout=120)
        lab.wait_nic("vf0")
        save(lab, "net-failover")
    return 0


if __name__ == "__main__":
    sys.exit(main())
