"""Services that must hear about a pair's life besides the kernel
(NetworkManager), each implementing guestfail.core.interfaces.Integration;
the reconciler calls their hooks without knowing which they are.  May import:
guestfail.core, guestfail.system and guestfail.integrations."""
