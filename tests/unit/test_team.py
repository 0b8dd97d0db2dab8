from __future__ import annotations

from guestfail.backends.team import teamd_config
from guestfail.core.config import parse


def test_teamd_config_for_a_pair() -> None:
    cfg = parse("[team]\nlink_watch_delay_down = 10")
    c = teamd_config(cfg, "ens11", "02:00:00:00:00:11", 0)
    assert c == {
        "device": "ens11",
        "hwaddr": "02:00:00:00:00:11",
        "runner": {"name": "activebackup", "hwaddr_policy": "same_all"},
        "link_watch": {"name": "ethtool", "delay_up": 0, "delay_down": 10},
    }


def test_hwaddr_policy_follows_the_macs_unless_set() -> None:
    assert teamd_config(parse(""), "t", "02:00:00:00:00:11", 1)["runner"]["hwaddr_policy"] == "by_active"
    fixed = parse('[team]\nhwaddr_policy = "only_active"')
    assert teamd_config(fixed, "t", "02:00:00:00:00:11", 0)["runner"]["hwaddr_policy"] == "only_active"
