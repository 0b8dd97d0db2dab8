"""Debian guest images booted by systemd: the lab's image tier.

Three layers, each cached by a hash of what goes in:

1. the base root file system of a distribution (`base_recipe`): Debian's
   packages only, built by `lab.rootfs` with mmdebstrap; every network stack
   the tier tests is installed (ifupdown + isc-dhcp-client, netplan.io,
   NetworkManager, systemd-networkd), plus cloud-init, qemu-guest-agent,
   teamd and guestfail's dependencies, so the package installs offline;
2. a `Flavour` on top (`build`): which network stack runs and its
   configuration, the lab's control-channel service, the journal forwarded to
   a second serial port, and (unless `package=False`) the project's .deb
   installed with apt in the image's chroot, its maintainer scripts run, the
   way an image builder installs a package;
3. a qcow2 overlay per boot (`overlay`), thrown away after it, so the image
   stays clean.

An image is a sparse raw ext4 file made with `mkfs.ext4 -d` from the tree;
the kernel and initramfs are the image's own, booted by QEMU directly
(`ImageLab` in `lab.imagelab`).

Cache: under `lab.rootfs.cache_dir()` (/var/cache/guestfail-lab), next to the
root file systems.  A fresh machine builds everything; a changed .deb or
flavour rebuilds only layer 2 (seconds), a changed package list layer 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from lab import rootfs
from lab.rootfs import Recipe

log = logging.getLogger("lab.image")
REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "lab" / "guest_helper.py"

#: bump when build() changes what it makes from the same inputs
IMAGE_VERSION = 1
IMAGE_SIZE = "3G"

SUITES = {"debian12": "bookworm", "debian13": "trixie"}
STACKS = ("ifupdown", "netplan", "networkmanager", "networkd")

# Every stack in one base, so one mmdebstrap run per distribution serves
# every flavour; a flavour enables one stack and disables the others.
BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "procps",
    "linux-image-amd64",
    "ifupdown",
    "isc-dhcp-client",
    "netplan.io",
    "network-manager",
    "cloud-init",
    "qemu-guest-agent",
    "libteam-utils",
    "python3",
    # guestfail's dependencies (debian/control): the .deb installs offline
    "python3-pyroute2",
    "python3-pyudev",
    "python3-dbus-fast",
    "python3-tenacity",
)


def base_recipe(distro: str) -> Recipe:
    try:
        suite = SUITES[distro]
    except KeyError:
        raise ValueError(f"unknown distribution {distro!r} (one of {', '.join(SUITES)})") from None
    return Recipe(
        name=f"image-{distro}",
        suite=suite,
        packages=BASE_PACKAGES,
        variant="apt",
        # what an image builder cleans: the package cache is not part of a guest
        customize=('rm -f "$1"/var/cache/apt/archives/*.deb',),
    )


# ---------------------------------------------------------------- flavours

#: the standby's name in the image guests (lab.imagelab's topology: a
#: virtio-net on the root port in slot 11, named by udev from its slot)
STANDBY = "ens11"
STANDBY_MAC = "02:00:00:00:00:11"

# The network configuration each stack gets, as the distributions ship it:
# DHCP on the standby, by name (ifupdown, networkd, NetworkManager's own
# "Wired connection") or, as cloud-init writes it for netplan, matched by MAC
# with set-name.
_IFUPDOWN = """\
# lab image ({flavour}): Debian's cloud images' way
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug {sby}
iface {sby} inet dhcp
"""
_NETPLAN = """\
# lab image ({flavour}): what cloud-init's fallback configuration writes
network:
  version: 2
  renderer: networkd
  ethernets:
    {sby}:
      match:
        macaddress: "{mac}"
      set-name: {sby}
      dhcp4: true
"""
_NETWORKD = """\
# lab image ({flavour})
[Match]
Name={sby}

[Network]
DHCP=ipv4
IPv6AcceptRA=no
"""
_JOURNALD = """\
# lab image: every journal line also goes to the second serial port, which
# the lab keeps (the journal of a guest that hung is still there)
[Journal]
ForwardToConsole=yes
TTYPath=/dev/ttyS1
MaxLevelConsole=debug
"""
_CLOUD_CFG = """\
# lab image: the network stack is the flavour's, configured by the image (as
# an image builder does); cloud-init looks for a NoCloud seed only (a boot
# without one: ds-identify finds nothing and cloud-init stays off).  The
# module lists are this minimal image's (no ssh, locales or partitions to
# grow); guestfail's module runs from its own unit whatever they are.
network:
  config: disabled
datasource_list: [ NoCloud ]
cloud_init_modules:
  [ seed_random, bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts, users_groups ]
cloud_config_modules: [ runcmd ]
cloud_final_modules: [ scripts_per_once, scripts_per_boot, scripts_per_instance, scripts_user, final_message ]
"""
_HELPER_UNIT = """\
[Unit]
Description=guestfail lab: control channel to the host (virtio-serial port lab.ctl)
DefaultDependencies=no
BindsTo=dev-virtio\\x2dports-lab.ctl.device
After=dev-virtio\\x2dports-lab.ctl.device
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/guestfail-lab/guest_helper.py --systemd
Restart=always
RestartSec=200ms
"""
_HELPER_UDEV = """\
# lab image: start the control channel when its port appears
SUBSYSTEM=="virtio-ports", ATTR{name}=="lab.ctl", TAG+="systemd", ENV{SYSTEMD_WANTS}+="lab-helper.service"
"""


@dataclass(frozen=True)
class Flavour:
    """One bootable image: a distribution, the network stack that runs, and
    whether the project's .deb is installed (and with which configuration)."""

    distro: str  # debian12, debian13
    stack: str  # one of STACKS
    package: bool = True
    # /etc/guestfail/guestfail.toml as the admin wrote it ("" for none)
    config: str = ""

    @property
    def name(self) -> str:
        """distro-stack, "-nopkg" without the package, "-cfg<hash>" with a configuration."""
        tag = f"-cfg{hashlib.sha256(self.config.encode()).hexdigest()[:6]}" if self.config else ""
        return f"{self.distro}-{self.stack}" + ("" if self.package else "-nopkg") + tag

    def validate(self) -> None:
        if self.distro not in SUITES:
            raise ValueError(f"unknown distribution {self.distro!r} (one of {', '.join(SUITES)})")
        if self.stack not in STACKS:
            raise ValueError(f"unknown network stack {self.stack!r} (one of {', '.join(STACKS)})")


def layer_script(fl: Flavour) -> str:
    """The shell script that turns the base tree ($1) into the flavour's tree
    (pure: tests read it).  It runs on the host, as root, in a private mount
    namespace; commands that belong to the guest run in its chroot."""
    sby, mac = STANDBY, STANDBY_MAC
    enable = {"ifupdown": ["networking.service"], "netplan": ["systemd-networkd.service"]}
    enable["networkd"] = ["systemd-networkd.service"]
    enable["networkmanager"] = ["NetworkManager.service"]
    every = ["networking.service", "systemd-networkd.service", "NetworkManager.service"]
    disable = [u for u in every if u not in enable[fl.stack]]
    lines = [
        "set -eu",
        'T="$1"',
        'in_guest() { chroot "$T" "$@"; }',
        'echo guest > "$T/etc/hostname"',
        "printf '127.0.0.1 localhost\\n127.0.1.1 guest\\n' > \"$T/etc/hosts\"",
        ': > "$T/etc/fstab"',
        # a console login for people debugging by hand (the lab never logs in)
        "in_guest passwd -d root >/dev/null",
        # no timers that wake a TCG guest for housekeeping
        "in_guest systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer man-db.timer"
        " e2scrub_all.timer fstrim.timer dpkg-db-backup.timer 2>/dev/null || true",
        'mkdir -p "$T/etc/systemd/journald.conf.d" "$T/usr/local/lib/guestfail-lab"',
        f"cat > \"$T/etc/systemd/journald.conf.d/lab.conf\" <<'LAB'\n{_JOURNALD}LAB",
        'cp "$HELPER" "$T/usr/local/lib/guestfail-lab/guest_helper.py"',
        f"cat > \"$T/etc/systemd/system/lab-helper.service\" <<'LAB'\n{_HELPER_UNIT}LAB",
        f"cat > \"$T/etc/udev/rules.d/60-lab-helper.rules\" <<'LAB'\n{_HELPER_UDEV}LAB",
        f"cat > \"$T/etc/cloud/cloud.cfg.d/99-lab.cfg\" <<'LAB'\n{_CLOUD_CFG}LAB",
        # network-online.target is part of every boot, as on a server whose
        # services want it (cloud-init's do): the boot measures it
        "in_guest systemctl add-wants --quiet multi-user.target network-online.target",
        # the network stack
        f"in_guest systemctl disable --quiet {' '.join(disable)} 2>/dev/null || true",
        f"in_guest systemctl enable --quiet {' '.join(enable[fl.stack])}",
    ]
    if fl.stack == "ifupdown":
        text = _IFUPDOWN.format(flavour=fl.name, sby=sby)
        lines.append(f"cat > \"$T/etc/network/interfaces\" <<'LAB'\n{text}LAB")
    elif fl.stack == "netplan":
        text = _NETPLAN.format(flavour=fl.name, sby=sby, mac=mac)
        lines += [
            'mkdir -p "$T/etc/netplan"',
            f"cat > \"$T/etc/netplan/50-cloud-init.yaml\" <<'LAB'\n{text}LAB",
            'chmod 600 "$T/etc/netplan/50-cloud-init.yaml"',
        ]
    elif fl.stack == "networkd":
        text = _NETWORKD.format(flavour=fl.name, sby=sby)
        lines.append(f"cat > \"$T/etc/systemd/network/50-{sby}.network\" <<'LAB'\n{text}LAB")
    # networkmanager: NetworkManager's own "Wired connection 1" (DHCP), as on
    # a fresh Fedora or RHEL guest
    if fl.config:
        lines += [
            'mkdir -p "$T/etc/guestfail"',
            f"cat > \"$T/etc/guestfail/guestfail.toml\" <<'LAB'\n{fl.config}LAB",
        ]
    # the packages, the way an image builder installs them: apt in the chroot,
    # maintainer scripts run; their dependencies are in the base (no network).
    # Every .deb given also lies in /root/debs for the tests that install,
    # upgrade and remove it on a running guest.
    lines += ['mkdir -p "$T/root/debs"', 'cp "$DEBDIR"/*.deb "$T/root/debs/"']
    if fl.package:
        lines.append(
            "in_guest env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
            " $INSTALL >/dev/null"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- build


@dataclass(frozen=True)
class Image:
    """A built image: the disk, and the kernel and initramfs it boots."""

    flavour: Flavour
    disk: Path  # raw ext4, read-only base of every boot's overlay
    kernel: Path
    initrd: Path
    seconds: float  # how long building this layer took (0: from the cache)
    base_seconds: float  # how long the base tree took when it was built


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kernel_files(tree: Path) -> tuple[Path, Path]:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise rootfs.RootfsError(f"no kernel in {tree}/boot")
    kernel = kernels[-1]
    initrd = tree / "boot" / ("initrd.img-" + kernel.name[len("vmlinuz-") :])
    if not initrd.is_file():
        raise rootfs.RootfsError(f"no initramfs {initrd}")
    return kernel, initrd


def image_key(fl: Flavour, debs: list[Path], install: list[str]) -> str:
    doc = {
        "version": IMAGE_VERSION,
        "base": base_recipe(fl.distro).key(),
        "flavour": asdict(fl),
        "script": layer_script(fl),
        "helper": _digest(HELPER),
        "debs": sorted((d.name, _digest(d)) for d in debs),
        "install": install,
        "size": IMAGE_SIZE,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


_OVERLAY_RUN = """\
set -eu
base="$1"; work="$2"; script="$3"; disk="$4"; size="$5"
mkdir -p "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/work" "$work/root"
for d in proc sys dev; do mount --rbind "/$d" "$work/root/$d"; done
mount -t tmpfs tmpfs "$work/root/tmp"
mount -t tmpfs tmpfs "$work/root/run"
sh -eu "$script" "$work/root"
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*_Packages 2>/dev/null || true
for d in run tmp dev sys proc; do umount -R "$work/root/$d"; done
mkfs.ext4 -q -F -L root -E root_owner=0:0 -d "$work/root" "$disk" "$size"
"""


def build(fl: Flavour, debs: list[Path], install: Optional[list[str]] = None) -> Image:
    """The image of `fl`, built now if the cache lacks it.  `debs` are copied
    to /root/debs in the image; `install` names those the image has installed
    (default: every .deb whose name does not say it is the upgrade build)."""
    fl.validate()
    if install is None:
        install = [d.name for d in debs]
    missing = [n for n in install if n not in {d.name for d in debs}]
    if missing:
        raise ValueError(f"cannot install {missing}: not among the .debs given")
    base_r = base_recipe(fl.distro)
    base = rootfs.build(base_r)
    kernel, initrd = _kernel_files(base)
    key = image_key(fl, debs, install)
    disk = rootfs.cache_dir() / f"disk-{fl.name}-{key}.raw"
    base_seconds = rootfs.build_seconds(base_r) or 0.0
    if disk.is_file():
        return Image(fl, disk, kernel, initrd, 0.0, base_seconds)
    with rootfs._locked(rootfs.cache_dir() / f".{disk.name}.lock"):
        if disk.is_file():
            return Image(fl, disk, kernel, initrd, 0.0, base_seconds)
        t0 = time.monotonic()
        for pattern in (f"disk-{fl.name}-{'?' * 16}.*", f".disk-{fl.name}-{'?' * 16}.raw.lock"):
            for old in rootfs.cache_dir().glob(pattern):
                if key not in old.name:  # an older build of this flavour: superseded
                    old.unlink()
        with tempfile.TemporaryDirectory(prefix=f"guestfail-image-{fl.name}-") as tmp:
            t = Path(tmp)
            debdir = t / "debs"
            debdir.mkdir()
            for d in debs:
                shutil.copy2(d, debdir / d.name)
            script = t / "layer.sh"
            script.write_text(layer_script(fl))
            runner = t / "overlay.sh"
            runner.write_text(_OVERLAY_RUN)
            part = disk.with_name(disk.name + ".tmp")
            env = dict(
                os.environ,
                HELPER=str(HELPER),
                DEBDIR=str(debdir),
                INSTALL=" ".join(f"/root/debs/{n}" for n in install),
                PATH="/usr/sbin:/usr/bin:/sbin:/bin",
            )
            argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-eu", str(runner)]
            argv += [str(base), str(t / "ov"), str(script), str(part), IMAGE_SIZE]
            log.info("building image %s", fl.name)
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                part.unlink(missing_ok=True)
                tail = "\n".join((proc.stderr + proc.stdout).splitlines()[-30:])
                raise rootfs.RootfsError(f"image {fl.name}: the layer failed ({proc.returncode}):\n{tail}")
            os.replace(part, disk)
        seconds = round(time.monotonic() - t0, 1)
        (disk.with_suffix(".json")).write_text(json.dumps({"flavour": asdict(fl), "seconds": seconds}) + "\n")
        log.info("built image %s in %.1f s: %s", fl.name, seconds, disk)
    return Image(fl, disk, kernel, initrd, seconds, base_seconds)


def overlay(img: Image, path: Path) -> Path:
    """A throw-away qcow2 over the image: a boot writes there, never to the image."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(img.disk), str(path)],
        check=True,
        capture_output=True,
    )
    return path


@dataclass
class BuildReport:
    images: list[Image] = field(default_factory=list)

    def summary(self) -> str:
        return ", ".join(f"{i.flavour.name} {i.seconds:.0f} s" for i in self.images)
