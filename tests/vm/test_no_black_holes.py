"""Issue 8: traffic from whichever path the host uses reaches the guest, and
every switch is announced at once.  The peer learns like a switch and can be
told to steer the guest's traffic to one path (an early MAC filter update).
The default configuration's checks run as steps in one guest (a boot is most
of a scenario's time under TCG); `ingress = "off"` boots its own."""

from __future__ import annotations

import time
from typing import Any, Optional

from lab import topology
from lab.vm import Lab

from .helpers import Guest, replies_on, stream_start, stream_stop

RATE = 200.0


def paired_with_stream(g: Guest, config: Optional[str] = None) -> tuple[str, str, str, Any]:
    sby = g.setup_standby()
    g.start_agent(config)
    g.lab.plug("vf0")
    master, nsby, npf = sby, f"{sby}nsby", f"{sby}npf"
    g.wait_active(master, npf)
    stream = stream_start(g.lab, RATE)
    replies_on(g.lab, stream, "vf0", 100)
    return master, nsby, npf, stream


def settled(g: Guest, stream: Any, path: str) -> Any:
    """The stream's report once every packet sent so far has had its time
    (a few more replies came back after them): the stream goes on, and a
    packet still in flight is not lost."""
    replies_on(g.lab, stream, path, 20)
    return stream.report()


def now() -> int:
    return time.monotonic_ns()


def send_broadcasts(lab: Lab, port: int, n: int) -> None:
    async def go() -> None:
        for i in range(n):
            lab.peer.send_broadcast(port, b"GFBC%04d" % i)

    lab.on_loop(go(), timeout=30)


def vf_link_down_loses_only_while_the_driver_has_not_noticed(
    g: Guest, stream: Any, master: str, nsby: str
) -> None:
    t_down = now()
    g.lab.set_link("vf0", up=False)
    g.wait_active(master, nsby)
    t_switched = now()  # the host saw the switch (a bound: it happened before)
    replies_on(g.lab, stream, "sb0", int(3 * RATE))  # several seconds on the standby
    t_end = now()
    report = settled(g, stream, "sb0")
    window = report.window(t_down, t_end)
    detect_s = (t_switched - t_down) / 1e9
    # loss is bounded by the time the guest needed to see the link go, and is
    # zero once the switch happened (1 s of slack for the host's own view)
    assert window.lost <= (detect_s + 0.2) * RATE, (window.lost, detect_s)
    assert report.window(t_switched + 1_000_000_000, t_end).lost == 0


def vf_link_back_loses_nothing(g: Guest, stream: Any, master: str, npf: str) -> None:
    t_up = now()
    g.lab.set_link("vf0", up=True)
    g.wait_active(master, npf)
    replies_on(g.lab, stream, "vf0", int(2 * RATE))
    t_end = now()
    assert settled(g, stream, "vf0").window(t_up, t_end).lost == 0
    # the announcement moved the peer's learning to the VF at once
    assert g.lab.peer.learned_path() == "vf0"


def host_steers_early_to_the_standby_and_back(
    g: Guest, stream: Any, master: str, npf: str, ingress: str
) -> None:
    t0 = now()
    g.lab.peer.steer("sb0")  # the host moved the MAC filter before the guest switched
    if ingress == "unicast":
        replies_on(g.lab, stream, "vf0", int(2 * RATE))
    else:  # nothing comes back: wait for the sends instead (the peer's own clock)
        sent = stream.sent

        def two_seconds_sent(_: Any) -> bool:
            return bool(stream.sent >= sent + 2 * RATE)

        g.lab.on_loop(g.lab.peer.wait_for(two_seconds_sent, 30, "2 s of pings"), timeout=40)
    t1 = now()
    g.lab.peer.steer(None)
    replies_on(g.lab, stream, "vf0", int(RATE))
    t2 = now()
    report = settled(g, stream, "vf0")
    assert g.link(master)["linkinfo"]["info_data"]["active_slave"] == npf  # no switch happened
    steered = report.window(t0, t1)
    if ingress == "unicast":
        assert steered.lost == 0
        assert steered.sent_per_path.get("sb0", 0) == steered.sent  # really sent on the standby path
        assert report.window(t1, t2).lost == 0
    else:
        # the bond's own rule: what arrives on the inactive member is dropped
        assert steered.lost == steered.sent_per_path.get("sb0", 0) > 0


def broadcasts_arrive_exactly_once_in_steady_state(g: Guest, stream: Any, master: str, npf: str) -> None:
    g.lab.request("bcast_start", key="b", port=9999)
    n = 50
    before = {p: g.lab.peer.counters(p).tx_frames for p in ("sb0", "vf0")}
    send_broadcasts(g.lab, 9999, n)
    r = g.lab.request("bcast_wait", key="b", distinct=n, timeout_=30, timeout=40)
    assert r["ok"], r
    # fences: a reply to a ping sent after the broadcasts on each path means
    # the guest has processed every broadcast copy on that path before it
    for path in ("sb0", "vf0"):
        g.lab.peer.steer(path)
        replies_on(g.lab, stream, "vf0", 50)
    g.lab.peer.steer(None)
    counts = g.lab.request("bcast_stop", key="b")["counts"]
    assert len(counts) == n
    assert set(counts.values()) == {1}, counts
    # the peer flooded every broadcast on both paths
    for p in ("sb0", "vf0"):
        assert g.lab.peer.counters(p).tx_frames - before[p] >= n
    assert g.link(master)["linkinfo"]["info_data"]["active_slave"] == npf


def test_no_black_hole_through_a_pairs_life(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    master, nsby, npf, stream = paired_with_stream(g)
    broadcasts_arrive_exactly_once_in_steady_state(g, stream, master, npf)
    host_steers_early_to_the_standby_and_back(g, stream, master, npf, "unicast")
    vf_link_down_loses_only_while_the_driver_has_not_noticed(g, stream, master, nsby)
    vf_link_back_loses_nothing(g, stream, master, npf)
    stream_stop(g.lab, stream)


def test_host_steering_early_with_ingress_off_drops_on_the_inactive_member(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    master, _nsby, npf, stream = paired_with_stream(g, '[agent]\ningress = "off"\n')
    host_steers_early_to_the_standby_and_back(g, stream, master, npf, "off")
    stream_stop(g.lab, stream)
