"""Record the netlink reply guestfail-probe's unit tests replay
(tests/data/igb-pf.link.bin): RTM_NEWLINK of an igb PF with its VF list
(IFLA_VFINFO_LIST), from the lab's "host" guest with QEMU 10's igb and
Linux's igb driver.  VF 0 has a MAC and VLAN 100 set over netlink, VF 1
nothing.  Run again after changing what the tests need:

    flock /work/tcg.lock .venv/bin/python -m tests.data.record_probe_dumps
"""

from __future__ import annotations

import sys
from pathlib import Path

from lab import qemu10
from lab.vm import Lab
from tests.vm.test_probe_igb import topology

HERE = Path(__file__).resolve().parent

# In the guest: RTM_GETLINK for one interface with IFLA_EXT_MASK =
# RTEXT_FILTER_VF, the reply's bytes written to a file (standard library only).
GETLINK = r"""
import socket, struct, sys
name, out = sys.argv[1], sys.argv[2]
idx = socket.if_nametoindex(name)
ifi = struct.pack("BxHiII", 0, 0, idx, 0, 0)
ext = struct.pack("HHI", 8, 29, 1)
body = ifi + ext
msg = struct.pack("IHHII", 16 + len(body), 18, 1, 1, 0) + body
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.sendto(msg, (0, 0))
open(out, "wb").write(s.recv(65536))
"""


def main() -> int:
    with Lab(topology(), name="record-igb", qemu_bin=str(qemu10.wrapper())) as lab:
        pf = lab.ifname("pf")
        lab.run("sh", "-c", f"echo 2 > /sys/class/net/{pf}/device/sriov_numvfs")
        lab.run("ip", "link", "set", pf, "up")
        lab.run("ip", "link", "set", pf, "vf", "0", "mac", "02:00:00:00:cc:01", "vlan", "100")
        out = lab.guest_path("igb-pf.link.bin")
        lab.run(sys.executable, "-c", GETLINK, pf, out)
        raw = Path(out).read_bytes()
        (HERE / "igb-pf.link.bin").write_bytes(raw)
        print(f"igb-pf.link.bin: {len(raw)} bytes ({pf})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
