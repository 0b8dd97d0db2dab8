"""Masters: an active-backup bond (bond) or a team under teamd (team), each
implementing guestfail.core.interfaces.Backend.  May import: guestfail.core,
guestfail.system and guestfail.backends."""
