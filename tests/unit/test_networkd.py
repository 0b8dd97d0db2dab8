"""guestfail.networkd: which .network files need a drop-in for the master."""

from __future__ import annotations

from pathlib import Path

from guestfail.integrations.networkd import DROPIN_NAME, dropin_for, ensure_dropins, names_match, parse_match

MAC = "02:00:00:00:00:11"
# what netplan 0.106 (Debian 12) and 1.1 (Debian 13) generate for cloud-init's
# fallback configuration: match: {macaddress: M}, set-name: ens11
NETPLAN = f"""[Match]
PermanentMACAddress={MAC}
Name=ens11

[Network]
DHCP=ipv4
"""


def test_parse_match_lists_and_resets() -> None:
    m = parse_match("[Match]\nName=a b\nName=c\n# x\nDriver=x\nDriver=\n[Network]\nName=no\n")
    assert m == {"Name": ["a", "b", "c"], "Driver": []}


def test_names_match_globs_and_negation() -> None:
    assert names_match(["ens*"], "ens11")
    assert not names_match(["!ens*"], "ens11")
    assert names_match(["!eth*"], "ens11")
    assert not names_match([], "ens11")


def test_netplan_file_gets_a_dropin_matching_the_current_mac() -> None:
    text = dropin_for(parse_match(NETPLAN), "ens11", MAC)
    assert text is not None
    assert "[Match]\nPermanentMACAddress=\nMACAddress=02:00:00:00:00:11\n" in text


def test_azure_style_driver_match_is_cleared() -> None:
    text = dropin_for(parse_match(f"[Match]\nName=eth0\nMACAddress={MAC}\nDriver=hv_netvsc\n"), "eth0", MAC)
    assert text is not None and "Driver=\n" in text and "MACAddress=02" not in text


def test_no_dropin_where_the_master_matches_or_the_name_differs() -> None:
    assert dropin_for(parse_match("[Match]\nName=ens11\n"), "ens11", MAC) is None
    assert dropin_for(parse_match(f"[Match]\nName=ens11\nMACAddress={MAC}\n"), "ens11", MAC) is None
    assert dropin_for(parse_match(NETPLAN), "ens12", MAC) is None
    assert dropin_for(parse_match(f"[Match]\nPermanentMACAddress={MAC}\n"), "ens11", MAC) is None


def test_ensure_dropins_writes_once(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    run.mkdir()
    etc.mkdir()
    (run / "10-netplan-ens11.network").write_text(NETPLAN)
    (etc / "20-other.network").write_text("[Match]\nName=ens4\n")
    written = ensure_dropins({"ens11": MAC}, (etc, run), run)
    assert written == [run / "10-netplan-ens11.network.d" / DROPIN_NAME]
    assert "MACAddress=02:00:00:00:00:11" in written[0].read_text()
    assert ensure_dropins({"ens11": MAC}, (etc, run), run) == []  # in place already


def test_a_file_in_etc_hides_the_same_name_in_run(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    (run / "10-netplan-ens11.network").write_text(NETPLAN)
    (etc / "10-netplan-ens11.network").write_text("[Match]\nName=ens11\n")  # the admin's override
    assert ensure_dropins({"ens11": MAC}, (etc, run), run) == []
