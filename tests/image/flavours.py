"""Every image the tier boots, so they can be built before the first boot
(`python -m tests.image.flavours`: prints the build times, cold and cached)."""

from __future__ import annotations

import sys
import time

from lab import image
from lab.image import Flavour

#: the first boot's image: the bond's own peer notification off, so an
#: announcement after a switch is guestfail's
FIRST_BOOT_CONFIG = "[bond]\nnum_peer_notif = 0\n"
#: the package-life image: an admin chose the team backend before installing
TEAM_CONFIG = '[agent]\nbackend = "team"\n'


def stack(distro: str, name: str) -> Flavour:
    return Flavour(distro, name)


def first_boot(distro: str) -> Flavour:
    return Flavour(distro, "ifupdown", config=FIRST_BOOT_CONFIG)


def package_life(distro: str) -> Flavour:
    return Flavour(distro, "networkd", package=False, config=TEAM_CONFIG)


def every() -> list[Flavour]:
    out = []
    for d in sorted(image.SUITES):
        out += [stack(d, s) for s in image.STACKS]
        out += [first_boot(d), package_life(d)]
    return out


def main() -> int:
    from lab.debs import build_debs
    from tests.image.conftest import build_image

    t0 = time.monotonic()
    debs = build_debs()
    print(f"packages built in {time.monotonic() - t0:.1f} s")
    for fl in every():
        t = time.monotonic()
        img = build_image(debs, fl)
        took = time.monotonic() - t
        print(
            f"{fl.name:32} {took:6.1f} s  (layer {img.seconds:.1f} s; base built in {img.base_seconds:.1f} s)"
        )
    print(f"all images ready in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
