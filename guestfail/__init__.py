"""guestfail: user-space failover for VMs with SR-IOV VFs."""

__version__ = "0.1.1"
