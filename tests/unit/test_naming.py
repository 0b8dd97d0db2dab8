from __future__ import annotations

import zlib
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from guestfail.core import naming
from guestfail.core.config import ifname_problem


def test_short_names_get_the_suffix() -> None:
    assert naming.standby_name("ens11") == "ens11nsby"
    assert naming.primary_name("ens11") == "ens11npf"
    assert naming.standby_name("enp0s31f6") == "enp0s31f6nsby"  # 13 bytes


def test_exactly_fitting_name_is_not_shortened() -> None:
    assert naming.standby_name("enp0s31f6xy") == "enp0s31f6xynsby"  # 15 bytes


def test_long_name_follows_the_documented_rule() -> None:
    base = "enp0s31f6longer"  # 15 bytes
    digest = f"{zlib.crc32(base.encode()):08x}"[:4]
    assert naming.standby_name(base) == "enp0s31" + digest + "nsby"
    assert naming.primary_name(base) == "enp0s31f" + digest + "npf"


def test_names_sharing_a_prefix_stay_distinct() -> None:
    a = naming.standby_name("enp0s31f6abcd1")
    b = naming.standby_name("enp0s31f6abcd2")
    assert a != b
    assert len(a.encode()) == len(b.encode()) == 15


def test_never_cut_inside_a_utf8_character() -> None:
    name = naming.standby_name("ééééééé")  # 14 bytes
    assert name.encode().decode() == name
    assert len(name.encode()) <= 15
    assert ifname_problem(name) is None


SURROGATES: tuple[Literal["Cs"]] = ("Cs",)


@given(
    # names come from the kernel as UTF-8: no lone surrogates
    st.text(
        alphabet=st.characters(blacklist_characters="/: \t\n\v\f\r\0", blacklist_categories=SURROGATES),
        min_size=1,
    ).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 15 and s not in (".", ".."))
)
def test_every_legal_name_gives_legal_member_names(base: str) -> None:
    for name in (naming.standby_name(base), naming.primary_name(base)):
        assert len(name.encode("utf-8", "surrogateescape")) <= 15
        assert ifname_problem(name) is None
        assert name == naming.with_suffix(base, name[-4:] if name.endswith("nsby") else name[-3:])


def test_master_template_skips_taken_names() -> None:
    assert naming.master_from_template("gf{n}", "eth0", {"gf0", "gf1"}) == "gf2"
    assert naming.master_from_template("{standby}b", "eth0", set()) == "eth0b"


def test_free_name_check() -> None:
    names = {1: {"eth0", "alt0"}, 2: {"eth1"}}
    assert naming.check_free("alt0", None, names) == 1
    assert naming.check_free("alt0", 1, names) is None
    assert naming.check_free("eth9", None, names) is None


def test_a_template_result_too_long_is_cut_by_the_naming_rule() -> None:
    """Issue 16 #7: '{standby}-bond' works for a 15-byte standby name too."""
    name = naming.master_from_template("{standby}-bond", "enp0s20f0u1u2c3", set())
    assert len(name.encode()) <= 15 and name.startswith("enp0s20f0u1")
    assert naming.master_from_template("{standby}-bond", "enp0s20f0u1u2c3", set()) == name
    assert naming.master_from_template("{standby}-bond", "eth0", set()) == "eth0-bond"
