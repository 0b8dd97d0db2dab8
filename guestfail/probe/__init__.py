"""guestfail-probe: does a host NIC steer a VF's MAC to the VF before the
VF's driver is ready?

A host-side command, apart from the guest agent.  May import: guestfail.core
(its errors) and guestfail's version, nothing of the agent's layers
(tests/unit/test_layers.py checks it).  Inside, each module imports only the
ones listed above it:

* `facts`: frozen snapshots of a PF, its VFs and their settings (data only);
* `decide`: pure decisions: refusals, the steps of a run, what restoring
  needs, the verdict (unit-tested without root);
* `report`: the human summary, the JSON report, the udev hwdb file (pure);
* system surfaces, one module each: `netlink` (links, VF settings, VLAN
  devices, link events), `sysfs` (PCI/SR-IOV devices, driver binding, who
  holds a vfio device open), `packet` (AF_PACKET send and capture),
  `ethtool` (driver and firmware versions);
* `control`: the NIC's SR-IOV control plane as one small interface (the
  kernel's, or the lab's software model), built from those surfaces;
* `runner`: runs the steps, counts frames, restores on any exit;
* `cli`: the `guestfail-probe` command.
"""
