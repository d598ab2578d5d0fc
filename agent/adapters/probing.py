"""SocketProber: runs a VM's tcpSocket and httpGet probes with the standard library."""

from __future__ import annotations

import http.client
import socket

from agent.probe import Probe

__all__ = ["SocketProber"]


class SocketProber:
    """tcpSocket: a connection opens; httpGet: GET answers 200-399; within timeoutSeconds."""

    def check(self, probe: Probe, address: str) -> bool:
        timeout = float(probe.timeout_seconds)
        try:
            if probe.action == "tcpSocket":
                with socket.create_connection((address, probe.port), timeout=timeout):
                    return True
            connection = http.client.HTTPConnection(address, probe.port, timeout=timeout)
            try:
                connection.request("GET", probe.path, headers={"User-Agent": "virt-agent-probe"})
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
        except (OSError, http.client.HTTPException):
            return False
