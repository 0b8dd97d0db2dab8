"""The pure decisions: configuration, the model of the guest's links,
matching, planning, naming, the switch decision, the records and the status
document, the journal's entries, and the contracts between the run-time
pieces.  Data in, data out: nothing here reads or changes the system, so all
of it runs in unit tests without root.  May import: nothing outside
guestfail.core (and the standard library)."""
