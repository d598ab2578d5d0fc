"""``vmctl top``: CPU %, memory and network rates from two scrapes of the agent's /metrics."""

from __future__ import annotations

import threading

import pytest

from agent.cli.main import main
from agent.metrics.bounded import BoundedStats
from agent.metrics.http import MetricsServer
from agent.metrics.ports import DomainStats
from agent.metrics.setup import build_endpoint
from agent.metrics.top import parse_usage, top_rows
from tests.unit.test_metrics import DB, FACTS, QEMU_RECORD, TCG_RECORD, WEB


def scrape_text(cpu_ns: int, rx: int) -> str:
    record = dict(QEMU_RECORD, **{"cpu.time": cpu_ns, "net.0.rx.bytes": rx})
    source = BoundedStats(Growing([record]), bound=2.0)
    return build_endpoint(source, lambda: [WEB], lambda: FACTS).render()[0].decode()


class Growing:
    """Each call: the web guest used one more CPU second and received 1 MiB more."""

    def __init__(self, records: list[dict[str, int | float | str]]) -> None:
        self.records = records
        self.calls = 0

    def all_domain_stats(self) -> list[DomainStats]:
        self.calls += 1
        grown = []
        for record in self.records:
            cpu = int(record["cpu.time"]) + self.calls * 1_000_000_000
            rx = int(record.get("net.0.rx.bytes", 0)) + self.calls * (1 << 20)
            grown.append(dict(record, **{"cpu.time": cpu, "net.0.rx.bytes": rx}))
        names = ["team-a_web", "team-b_db"]
        return [DomainStats(n, r) for n, r in zip(names, grown, strict=False)]


def test_rates_come_from_the_counters_of_two_scrapes() -> None:
    before = parse_usage(scrape_text(10_000_000_000, 1000))
    after = parse_usage(scrape_text(11_000_000_000, 1000 + 4096))
    [row] = top_rows(before, after, 2.0)
    assert (row.namespace, row.name, row.phase) == ("team-a", "web", "running")
    assert row.cpu_percent == pytest.approx(50.0)  # 1 CPU second in 2 s
    assert row.rx_per_second == pytest.approx(2048.0)
    assert row.tx_per_second == 0.0
    assert row.memory_bytes == 150000 * 1024
    # A counter that went down (the guest restarted) gives no rate rather than a negative one.
    [restarted] = top_rows(after, before, 2.0)
    assert restarted.cpu_percent is None


def test_vmctl_top_prints_the_nodes_vms(capsys: pytest.CaptureFixture[str]) -> None:
    source = Growing([dict(QEMU_RECORD), dict(TCG_RECORD)])
    endpoint = build_endpoint(BoundedStats(source, bound=2.0), lambda: [WEB, DB], lambda: FACTS)
    server = MetricsServer(endpoint, "127.0.0.1:0", ready=threading.Event().is_set)
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert main(["top", "--metrics", url, "--interval", "0.2", "-A"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "CPU", "MEMORY", "RX", "TX"]
        web = next(line.split() for line in lines if " web " in line)
        assert web[:3] == ["team-a", "web", "Running"]
        assert web[3].endswith("%") and float(web[3][:-1]) > 0
        assert web[4] == "146.5Mi" and web[5].endswith("MiB/s")
        assert main(["top", "--metrics", url, "--interval", "0.1", "-n", "team-b"]) == 0
        assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["db"]
    finally:
        server.stop()


def test_vmctl_top_needs_the_metrics_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--metrics", ""]) == 2
    assert "--metrics URL" in capsys.readouterr().err
    assert main(["top", "--metrics", "http://127.0.0.1:9/metrics", "--interval", "0"]) == 1
    assert "cannot read the agent's metrics" in capsys.readouterr().err
