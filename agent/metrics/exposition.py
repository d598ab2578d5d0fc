"""Endpoint: the body of one /metrics answer, in the format the scraper asked for.

VM and node families come pre-rendered from the collector (see families.py); the agent's
own ``virt_agent_*`` and ``process_*`` metrics go through prometheus_client's encoders, and
come last so that an OpenMetrics body ends with its single ``# EOF``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.metrics.collector import VMCollector

__all__ = ["Endpoint"]

OPENMETRICS = "application/openmetrics-text"


class Endpoint:
    """Renders one scrape: ``render(accept)`` → (body, content type)."""

    def __init__(self, vms: VMCollector, agent: CollectorRegistry) -> None:
        self.vms = vms
        self.agent = agent

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith(OPENMETRICS)
        vm_text = self.vms.collect().render(openmetrics=openmetrics).encode()
        return vm_text + encoder(self.agent), content_type
