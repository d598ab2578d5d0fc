"""Defaults shared by the daemon, its clients and the spec: each stated once."""

from __future__ import annotations

__all__ = ["GRACE_PERIOD_SECONDS", "PULL_TIMEOUT_SECONDS", "UNIX_SOCKET"]

# Where the agent serves node-local clients (vmctl, probes) unless told otherwise.
UNIX_SOCKET = "/run/virt-agent/agent.sock"
# terminationGracePeriodSeconds when a spec does not say (KubeVirt's default).
GRACE_PERIOD_SECONDS = 30
# How long a whole container disk pull (all layers) or a DataVolume import may take.
PULL_TIMEOUT_SECONDS = 1800.0
