"""bench.profile's summary of py-spy's collapsed stacks."""

from __future__ import annotations

from bench.profile import render, summarize

RAW = """\
run (loop:1);_on_netlink (daemon:266);read (linkevents:80) 6
run (loop:1);_on_netlink (daemon:266);on_link_event (daemon:291) 3
_bootstrap (threading.py:1);_set_active (switcher:360) 1
garbage without a count
"""


def test_self_and_total_samples_per_function() -> None:
    prof = summarize(RAW)
    assert prof["samples"] == 10
    own = {r["function"]: r["samples"] for r in prof["self"]}
    assert own["read (linkevents:80)"] == 6
    assert own["_set_active (switcher:360)"] == 1
    total = {r["function"]: r for r in prof["total"]}
    assert total["_on_netlink (daemon:266)"]["samples"] == 9
    assert total["_on_netlink (daemon:266)"]["share"] == 0.9
    assert [r["samples"] for r in prof["total"]][:3] == [9, 9, 6]  # busiest first


def test_render_says_when_nothing_was_recorded() -> None:
    assert "py-spy wrote no profile" in render({"error": "py-spy wrote no profile"}, "x")
    assert "10 samples" in render(summarize(RAW), "x")
