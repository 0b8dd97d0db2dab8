"""The demo: guestfail doing its main job in the lab, step by step.

    .venv/bin/python -m lab.demo

Boots Debian's kernel under QEMU (TCG: most of a minute), runs guestfail in
the guest, hot-plugs a VF, shows `guestfail status`, unplugs the VF while the
lab's peer pings the guest 200 times a second, shows the switch and what the
peer lost, plugs the VF back at another slot, and ends with the status table.
All traffic stays on this machine (loopback UDP backends).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from lab import topology
from lab.agent import agent_argv, install_files
from lab.topology import DEFAULT_PRIMARY_MODEL
from lab.vm import Lab, accel, guest_kernel

GUEST_IP = "192.0.2.2"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200, help="pings per second from the peer (default 200)")
    args = ap.parse_args(argv)

    say(f"booting {guest_kernel()} under QEMU ({accel()}); this takes most of a minute under TCG")
    with Lab(topology.basic(), name="demo") as lab:
        say(f"guest up in {lab.boot_seconds:.0f} s: {lab.guest_info.get('kernel')}")
        install_files(lab)
        sby = lab.ifname("sb0")
        lab.run("ip", "link", "set", sby, "up")
        lab.run("ip", "addr", "add", f"{GUEST_IP}/24", "dev", sby)
        say(f"the guest's network: {sby} (virtio-net, the standby) with {GUEST_IP}/24")

        argv, env = agent_argv("-v", "run", "--no-dbus")
        lab.spawn("agent", argv, env=env, notify=True)
        lab.wait_notify("agent", timeout=300)  # TCG: Python starts slowly on a busy host
        say("guestfail is running in the guest")

        async def start() -> Any:
            return lab.peer.start_stream(args.rate)

        stream = lab.on_loop(start(), timeout=10)
        say(f"the peer pings {GUEST_IP} {args.rate:.0f} times a second over loopback")

        def status() -> str:
            argv, env = agent_argv("status", "--no-dbus")
            return str(lab.run(*argv, env=env, check=False, timeout=300).out)

        def wait_active(slave: str) -> None:
            lab.wait_net([{"link": sby, "attr": "active_slave", "eq": slave}], timeout=180)

        say(f"hot-plugging a VF (a {DEFAULT_PRIMARY_MODEL} with the standby's MAC) over QMP")
        t0 = time.monotonic()
        vf = lab.plug("vf0")
        wait_active(f"{sby}npf")
        say(f"{vf} appeared and was paired in {time.monotonic() - t0:.1f} s:")
        print(indent(status()), flush=True)

        def replies_over(path: str, n: int) -> None:
            base: int = stream.report().replies_per_path.get(path, 0)

            def enough(_: Any) -> bool:
                got: int = stream.report().replies_per_path.get(path, 0)
                return got >= base + n

            lab.on_loop(lab.peer.wait_for(enough, 30, f"{n} replies over {path}"), timeout=40)

        replies_over("vf0", 50)
        say("the peer now gets the guest's replies over the VF")

        say("unplugging the VF (device_del, no warning to the guest)")
        t_unplug = time.monotonic_ns()
        lab.unplug("vf0")
        wait_active(f"{sby}nsby")
        replies_over("sb0", 50)
        report = stream.report().window(t_unplug - 1_000_000_000, time.monotonic_ns() - 500_000_000)
        say(
            f"switched to the standby: the peer lost {report.lost} of {report.sent} pings around the "
            f"unplug (longest gap {report.longest_gap_ms_recv:.0f} ms)"
        )
        print(indent(status()), flush=True)

        say("plugging the VF back, at another slot")
        t0 = time.monotonic()
        vf = lab.plug("vf0", port="p3")
        wait_active(f"{sby}npf")
        replies_over("vf0", 50)
        say(f"{vf} paired again in {time.monotonic() - t0:.1f} s; final status:")
        final = lab.on_loop(lab.peer.stop_stream(stream, 1.0), timeout=30)
        print(indent(status()), flush=True)
        say(
            f"whole run: {final.sent} pings, {final.lost} lost, replies per path "
            f"{dict(sorted(final.replies_per_path.items()))}"
        )
    say("lab torn down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
