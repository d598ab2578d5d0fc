"""A readiness or liveness probe of a VM (KubeVirt's Probe: tcpSocket or httpGet against
the guest's address, with Kubernetes' timing fields), as a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Probe"]


@dataclass(frozen=True, slots=True)
class Probe:
    """``action`` is tcpSocket (connect to ``port``) or httpGet (GET ``path``; 200-399 is
    success). Counts and times are Kubernetes' defaults unless set."""

    action: str
    port: int
    path: str = "/"
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
