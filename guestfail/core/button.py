"""The attention button: an ordered removal announced before the VF goes.

Design note: how the press is seen, where, and where not.

A PCIe hot-plug slot may have an attention button.  To remove a device in
order, the hypervisor presses it (QEMU does on `device_del` when the slot
uses native PCIe hot-plug: q35 with
`-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off`); the guest's
pciehp then blinks the slot's power indicator and powers the slot off 5 s
later, unless the button is pressed again within those 5 s, which cancels
the removal.  guestfail moves the pair to its standby at the first press
and back at the cancelling one (guestfail.agent.buttons).

How the press is seen: the kernel's own log.  pciehp says so at the moment
of the press, naming the slot (/sys/bus/pci/slots/<name>, the name
guestfail already knows the VF's slot by):

* Linux 6.5 and later: ``pciehp: Slot(5001): Button press: will power off in
  5 sec``, cancelled by ``pciehp: Slot(5001): Button press: canceling request
  to power off``;
* Linux 4.2 to 6.4 (Debian 12's 6.1, RHEL 9's 5.14): ``pciehp:
  Slot(5001): Powering off due to button press``, cancelled by ``pciehp:
  Slot(5001): Action canceled due to button press``;
* older pciehp, and shpchp (a conventional PCI bridge's SHPC slots) to this
  day: ``PCI slot #5001 - powering off due to button press``, cancelled by
  ``PCI slot #5001 - action canceled due to button press``.

/dev/kmsg gives each record as it is logged, with its facility (0: the
kernel; what user space writes there cannot pose as it) and the device that
logged it (``DEVICE=+pci:0000:00:10.1``, the slot's port); it is pollable,
so the daemon sleeps until the kernel logs something (guestfail.system.kmsg).
The alternatives do not work: the slot's sysfs attributes show the power
and the attention indicator but not the blinking power indicator nor the
press, and are not pollable; the Slot Control register in the port's config
space shows the blinking, but only by polling, and reading it needs
CAP_SYS_ADMIN (beyond the first 64 bytes); pciehp has no tracepoint for the
button (the PCI hot-plug tracepoint added in 2025 reports link and
presence changes only); no uevent is sent before the device goes.

Reading /dev/kmsg needs CAP_SYSLOG where kernel.dmesg_restrict is 1
(Debian's and RHEL's default; the kernel still accepts CAP_SYS_ADMIN in its
place, with a warning).  The shipped unit grants CAP_SYSLOG, turns
ProtectKernelLogs off (it hides /dev/kmsg and drops CAP_SYSLOG), and keeps
PrivateDevices on with /dev/kmsg alone bound in read-only
(BindReadOnlyPaths=, DeviceAllow=/dev/kmsg r); syslog(2), which could clear
the log, stays filtered out and /proc/kmsg stays hidden.

Where the press cannot be seen (no /dev/kmsg or no right to read it, a log
overrun that lost the record, a kernel that words it otherwise, a slot
without a button: ACPI hot-plug or a surprise removal), nothing changes:
the VF's removal is handled when it goes, as before.  `guestfail status`
says whether the button is watched (daemon.attention_button).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

#: after the press, pciehp powers the slot off in 5 s; a VF still there this
#: long after the press was not removed (a cancel whose record was lost):
#: its drain is undone
BUTTON_EXPIRES_S = 30.0

_PRESS = (
    re.compile(
        r"Slot\((?P<slot>[^)]+)\):? (?:Button press: will power off|Powering off due to button press)"
    ),
    re.compile(r"PCI slot #(?P<slot>\S+) - powering off due to button press"),
)
_CANCEL = (
    re.compile(
        r"Slot\((?P<slot>[^)]+)\):? (?:Button press: canceling request to power off"
        r"|Action canceled due to button press)"
    ),
    re.compile(r"PCI slot #(?P<slot>\S+) - action canceled due to button press"),
)


@dataclass(frozen=True)
class ButtonEvent:
    slot: str  # the slot's name, as in /sys/bus/pci/slots
    cancel: bool  # False: a press, the slot goes off in 5 s; True: pressed again, it stays
    port: str = ""  # the PCI function of the slot's port, if the record names it

    def reason(self) -> str:
        what = f"attention button on slot {self.slot}"
        return f"{what} pressed again: removal cancelled" if self.cancel else what


def button_event(facility: int, text: str, device: str = "") -> Optional[ButtonEvent]:
    """What a kernel log record says about an attention button, if anything.
    `device` is the record's DEVICE field (``+pci:0000:00:10.1``); only the
    kernel's own records (facility 0) count."""
    if facility != 0:
        return None
    port = device[len("+pci:") :] if device.startswith("+pci:") else ""
    for cancel, patterns in ((False, _PRESS), (True, _CANCEL)):
        for pattern in patterns:
            m = pattern.search(text)
            if m is not None:
                return ButtonEvent(m.group("slot"), cancel, port)
    return None
