"""PsutilHostProbe: facts about the node from psutil (the only `import psutil`)."""

from __future__ import annotations

import platform
import socket

import psutil

from agent.ports import HostFacts

__all__ = ["PsutilHostProbe"]


class PsutilHostProbe:
    """Reads CPU, memory and process facts of this host."""

    def facts(self) -> HostFacts:
        return HostFacts(
            hostname=socket.gethostname(),
            cpus=psutil.cpu_count(logical=True) or 1,
            memory_bytes=psutil.virtual_memory().total,
            cpu_model=_cpu_model(),
        )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
