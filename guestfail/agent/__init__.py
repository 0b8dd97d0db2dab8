"""The run-time: the daemon's event loop (daemon), the switch path as a
state machine (switcher, flight), the attention button's ordered removal
(buttons), reconciliation (reconciler), the executor that runs a plan's
steps (executor), the backend chosen by the configuration (wiring),
`release` (release) and guestfail's D-Bus API (server).  May import:
guestfail.core, guestfail.system, guestfail.backends,
guestfail.integrations and guestfail.agent."""
