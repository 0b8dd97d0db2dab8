"""The system surfaces, one module per surface: rtnetlink (netlink), sysfs,
udev, the system bus (dbus), processes (teamd), raw packets (packets),
sd_notify (notify), files (state file, journal), the node_exporter textfile
(metrics), and observe, which reads the
first three into one snapshot.  The only code that reads or changes the
system.  May import: guestfail.core and guestfail.system."""
