"""Small helpers shared by the test suites (the polling and port helpers live with the harness)."""

from stt_devstack.harness import wait_until
from stt_devstack.procs import free_port

__all__ = ["free_port", "wait_until"]
