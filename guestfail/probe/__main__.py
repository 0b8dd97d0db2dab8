from guestfail.probe.cli import entry

entry()
