"""Prometheus metrics: VM metrics with KubeVirt's names, the agent's own, and their HTTP server."""
