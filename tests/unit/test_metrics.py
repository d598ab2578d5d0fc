"""VM metrics with KubeVirt's names from libvirt's bulk stats, the bounded stats call, and
the /metrics server (text, OpenMetrics, health, readiness, TLS)."""

from __future__ import annotations

import gzip
import shutil
import socket
import ssl
import subprocess
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import Unavailable
from agent.metrics import agent_metrics
from agent.metrics.bounded import BoundedStats
from agent.metrics.collector import VM_SPECS
from agent.metrics.http import MetricsServer, server_ssl_context
from agent.metrics.ports import DomainStats, NodeFacts, VMView
from agent.metrics.setup import build_endpoint
from agent.ports import JobSample
from tests.testbed.wait import wait_for
from tests.unit.test_client import make_certificates

# What real libvirt (QEMU driver) reports for a running guest with a balloon driver, one NIC
# and one disk: units as libvirt gives them (ns, KiB, bytes).
QEMU_RECORD: dict[str, int | float | str] = {
    "state.state": 1,
    "state.reason": 1,
    "cpu.time": 12_500_000_000,
    "cpu.user": 2_000_000_000,
    "cpu.system": 3_000_000_000,
    "balloon.current": 262144,
    "balloon.maximum": 262144,
    "balloon.swap_in": 0,
    "balloon.swap_out": 0,
    "balloon.major_fault": 120,
    "balloon.minor_fault": 54000,
    "balloon.unused": 100000,
    "balloon.available": 240000,
    "balloon.usable": 180000,
    "balloon.disk_caches": 30000,
    "balloon.rss": 150000,
    "vcpu.current": 2,
    "vcpu.maximum": 2,
    "vcpu.0.state": 1,
    "vcpu.0.time": 5_000_000_000,
    "vcpu.0.wait": 1_000_000,
    "vcpu.0.delay": 2_000_000,
    "vcpu.1.state": 1,
    "vcpu.1.time": 4_000_000_000,
    "vcpu.1.wait": 0,
    "vcpu.1.delay": 3_000_000,
    "net.count": 1,
    "net.0.name": "va1a2b3c4d5e6",
    "net.0.rx.bytes": 1000,
    "net.0.rx.pkts": 10,
    "net.0.rx.errs": 0,
    "net.0.rx.drop": 1,
    "net.0.tx.bytes": 2000,
    "net.0.tx.pkts": 20,
    "net.0.tx.errs": 0,
    "net.0.tx.drop": 0,
    "block.count": 1,
    "block.0.name": "vda",
    "block.0.path": "/var/lib/virt-agent/vms/team-a_web/disk.qcow2",
    "block.0.rd.reqs": 300,
    "block.0.rd.bytes": 4_000_000,
    "block.0.rd.times": 500_000_000,
    "block.0.wr.reqs": 40,
    "block.0.wr.bytes": 160_000,
    "block.0.wr.times": 250_000_000,
    "block.0.fl.reqs": 7,
    "block.0.fl.times": 70_000_000,
    "block.0.allocation": 1,
    "block.0.capacity": 2,
    "block.0.physical": 3,
}
# A guest on software emulation without a balloon driver: only what QEMU itself knows.
TCG_RECORD: dict[str, int | float | str] = {
    "state.state": 1,
    "cpu.time": 9_000_000_000,
    "balloon.current": 131072,
    "balloon.maximum": 131072,
    "balloon.rss": 90000,
    "vcpu.current": 1,
    "vcpu.maximum": 1,
    "vcpu.0.state": 1,
    "vcpu.0.time": 8_000_000_000,
    "net.count": 0,
    "block.count": 0,
}
WEB = VMView(
    "team-a_web", "team-a", "web", "running", "q35", nic_names={"va1a2b3c4d5e6": "default"}
)
DB = VMView("team-b_db", "team-b", "db", "running")
OFF = VMView("team-b_off", "team-b", "off", "stopped")
FACTS = NodeFacts(
    name="node-a", cpus=8, memory_bytes=16 << 30, reserved_memory_bytes=1 << 30, virt_type="qemu"
)


Samples = dict[str, list[tuple[dict[str, str], float]]]


class FakeStats:
    """A DomainStatsSource: fixed records, optionally blocking until released."""

    def __init__(self, records: list[DomainStats], *, block: bool = False) -> None:
        self.records = records
        self.calls = 0
        self.release = threading.Event()
        if not block:
            self.release.set()

    def all_domain_stats(self) -> list[DomainStats]:
        self.calls += 1
        self.release.wait(30)
        return self.records


def scrape(
    records: list[DomainStats],
    vms: list[VMView],
    migrating: list[tuple[str, JobSample]] | None = None,
) -> Samples:
    """Every sample of one scrape: series name → [(labels, value)]."""
    endpoint = build_endpoint(BoundedStats(FakeStats(records), bound=2.0), lambda: vms,
                              lambda: FACTS, lambda: migrating or [])  # fmt: skip
    text = endpoint.render()[0].decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, series: str, /, **labels: str) -> float:
    matches = [v for found, v in samples.get(series, []) if labels.items() <= found.items()]
    assert len(matches) == 1, f"{series}{labels}: {samples.get(series)}"
    return matches[0]


def test_vm_metrics_have_kubevirt_names_units_and_labels() -> None:
    samples = scrape([DomainStats("team-a_web", QEMU_RECORD)], [WEB])
    vm = {"node": "node-a", "namespace": "team-a", "name": "web"}
    assert value(samples, "kubevirt_vmi_cpu_usage_seconds_total", **vm) == 12.5
    assert value(samples, "kubevirt_vmi_cpu_user_usage_seconds_total", **vm) == 2.0
    assert value(samples, "kubevirt_vmi_cpu_system_usage_seconds_total", **vm) == 3.0
    assert value(samples, "kubevirt_vmi_vcpu_seconds_total", id="1", state="running") == 4.0
    assert value(samples, "kubevirt_vmi_vcpu_delay_seconds_total", id="0") == 0.002
    assert value(samples, "kubevirt_vmi_vcpu_wait_seconds_total", id="0") == 0.001
    assert value(samples, "kubevirt_vmi_memory_resident_bytes", **vm) == 150000 * 1024
    assert value(samples, "kubevirt_vmi_memory_domain_bytes") == 256 << 20
    assert value(samples, "kubevirt_vmi_memory_actual_balloon_bytes") == 256 << 20
    assert value(samples, "kubevirt_vmi_memory_usable_bytes") == 180000 * 1024
    assert value(samples, "kubevirt_vmi_memory_used_bytes") == (240000 - 100000) * 1024
    assert value(samples, "kubevirt_vmi_memory_cached_bytes") == 30000 * 1024
    assert value(samples, "kubevirt_vmi_memory_pgmajfault_total") == 120
    # The interface label is the spec's interface name, not the tap.
    assert value(samples, "kubevirt_vmi_network_receive_bytes_total", interface="default") == 1000
    assert value(samples, "kubevirt_vmi_network_transmit_packets_total", interface="default") == 20
    assert value(samples, "kubevirt_vmi_network_receive_packets_dropped_total") == 1
    assert value(samples, "kubevirt_vmi_network_traffic_bytes_total", type="tx") == 2000
    assert value(samples, "kubevirt_vmi_storage_read_traffic_bytes_total", drive="vda") == 4e6
    assert value(samples, "kubevirt_vmi_storage_iops_write_total", drive="vda") == 40
    assert value(samples, "kubevirt_vmi_storage_read_times_seconds_total") == 0.5
    assert value(samples, "kubevirt_vmi_storage_flush_times_seconds_total") == 0.07
    info = value(samples, "kubevirt_vmi_info", **vm, phase="running", machine_type="q35")
    assert info == 1


def test_a_migrating_vm_reports_its_migration_progress() -> None:
    job = JobSample(
        data_total=300 << 20, data_processed=100 << 20, data_remaining=200 << 20,
        dirty_rate=250, page_size=4096, memory_bps=50 << 20,
    )  # fmt: skip
    samples = scrape([DomainStats("team-a_web", QEMU_RECORD)], [WEB, DB], [("team-a_web", job)])
    vm = {"node": "node-a", "namespace": "team-a", "name": "web"}
    assert value(samples, "kubevirt_vmi_migration_data_total_bytes", **vm) == 300 << 20
    assert value(samples, "kubevirt_vmi_migration_data_processed_bytes", **vm) == 100 << 20
    assert value(samples, "kubevirt_vmi_migration_data_remaining_bytes", **vm) == 200 << 20
    assert value(samples, "kubevirt_vmi_migration_dirty_memory_rate_bytes", **vm) == 250 * 4096
    assert value(samples, "kubevirt_vmi_migration_memory_transfer_rate_bytes", **vm) == 50 << 20
    # Only while a migration runs: the VM that is not migrating has no such series.
    assert len(samples["kubevirt_vmi_migration_data_remaining_bytes"]) == 1
    assert "kubevirt_vmi_migration_data_remaining_bytes" not in scrape([], [WEB])


def test_no_label_comes_from_user_labels_or_paths() -> None:
    samples = scrape([DomainStats("team-a_web", QEMU_RECORD)], [WEB])
    allowed = {"node", "namespace", "name", "interface", "drive", "id", "state", "type",
               "phase", "os", "workload", "flavor", "machine_type", "resource", "unit",
               "virt_type"}  # fmt: skip
    for name, found in samples.items():
        if name.startswith(("kubevirt_", "virt_agent_node_")):
            for labels, _ in found:
                assert set(labels) <= allowed, name
                assert "/var/lib" not in "".join(labels.values())


def test_a_guest_without_balloon_driver_reports_what_libvirt_gives() -> None:
    samples = scrape([DomainStats("team-b_db", TCG_RECORD)], [DB])
    assert value(samples, "kubevirt_vmi_cpu_usage_seconds_total", name="db") == 9.0
    assert value(samples, "kubevirt_vmi_memory_resident_bytes", name="db") == 90000 * 1024
    for absent in ("kubevirt_vmi_memory_usable_bytes", "kubevirt_vmi_memory_used_bytes",
                   "kubevirt_vmi_cpu_user_usage_seconds_total",
                   "kubevirt_vmi_network_receive_bytes_total"):  # fmt: skip
        assert absent not in samples  # absent, not zero


def test_only_the_agents_vms_are_exported_and_deleted_ones_vanish() -> None:
    records = [DomainStats("team-a_web", QEMU_RECORD), DomainStats("foreign", TCG_RECORD)]
    before = scrape(records, [WEB, DB, OFF])
    names = {labels["name"] for labels, _ in before["kubevirt_vmi_info"]}
    assert names == {"web", "db", "off"}
    cpu = {labels["name"] for labels, _ in before["kubevirt_vmi_cpu_usage_seconds_total"]}
    assert cpu == {"web"}  # db has no stats record; the foreign domain is not a VM
    after = scrape([DomainStats("team-b_db", TCG_RECORD)], [DB, OFF])  # web deleted
    everything = [labels.get("name") for found in after.values() for labels, _ in found]
    assert "web" not in everything
    assert value(after, "virt_agent_node_vms", phase="running") == 1
    assert value(after, "virt_agent_node_vms", phase="stopped") == 1
    assert value(after, "virt_agent_node_vms", phase="paused") == 0


def test_node_metrics() -> None:
    samples = scrape([], [WEB])
    assert value(samples, "virt_agent_node_capacity", resource="cpu") == 8
    assert value(samples, "virt_agent_node_capacity", resource="memory") == 16 << 30
    assert value(samples, "virt_agent_node_allocatable", resource="memory") == 15 << 30
    assert value(samples, "virt_agent_node_virtualization_info", virt_type="qemu") == 1


def misses(reason: str) -> float:
    return agent_metrics.SCRAPE_MISSES.labels(reason)._value.get()  # noqa: SLF001


def test_overlapping_scrapes_share_one_libvirt_call() -> None:
    source = FakeStats([DomainStats("team-a_web", QEMU_RECORD)], block=True)
    stats = BoundedStats(source, bound=10.0)
    results: list[list[DomainStats]] = []
    threads = [threading.Thread(target=lambda: results.append(stats.fetch())) for _ in range(5)]
    for thread in threads:
        thread.start()
    wait_for(lambda: stats.waiting() == 5, 10, 0.01, "5 scrapes waiting")
    source.release.set()
    for thread in threads:
        thread.join(10)
    assert source.calls == 1
    assert [len(r) for r in results] == [1] * 5
    stats.fetch()
    assert source.calls == 2  # a finished call is never reused by a later scrape


class StuckOnce:
    """The first call never answers (a frozen QEMU holding its job); later calls do, as
    libvirt's NOWAIT makes them skip the stuck domain."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def all_domain_stats(self) -> list[DomainStats]:
        self.calls += 1
        if self.calls == 1:
            self.release.wait(30)
            return []
        return [DomainStats("team-b_db", TCG_RECORD)]


def test_a_stuck_call_never_holds_a_scrape_past_its_bound() -> None:
    source = StuckOnce()
    stats = BoundedStats(source, bound=1.0)
    timeouts = misses("timeout")
    started = time.monotonic()
    records = stats.fetch()
    assert time.monotonic() - started <= 1.0 + 2.0  # the bound, plus scheduling slack
    assert [r.name for r in records] == ["team-b_db"]  # the fresh call's answer
    assert misses("timeout") == timeouts + 1
    assert stats.stuck_calls() == 1
    assert [r.name for r in stats.fetch()] == ["team-b_db"]  # no waiting on the stuck one
    source.release.set()


def test_stuck_calls_are_capped_and_libvirt_down_is_counted() -> None:
    never = FakeStats([], block=True)
    stats = BoundedStats(never, bound=0.2, max_stuck=2)
    assert stats.fetch() == []
    stuck = misses("stuck")
    assert stats.fetch() == []
    assert misses("stuck") == stuck + 1  # refused: no third call was started
    wait_for(lambda: never.calls == 2, 10, 0.01, "both calls made")
    never.release.set()

    class Down:
        def all_domain_stats(self) -> list[DomainStats]:
            raise Unavailable("libvirt at test:///x is not connected")

    unavailable = misses("unavailable")
    assert BoundedStats(Down(), bound=1.0).fetch() == []
    assert misses("unavailable") == unavailable + 1


# -- the HTTP server ---------------------------------------------------------------------


@pytest.fixture
def ready() -> Iterator[threading.Event]:
    yield threading.Event()


def serve(ready: threading.Event, context: ssl.SSLContext | None = None) -> MetricsServer:
    stats = BoundedStats(FakeStats([DomainStats("team-a_web", QEMU_RECORD)]), bound=2.0)
    migrating = [("team-a_web", JobSample(data_total=1 << 20, data_remaining=1 << 19))]
    endpoint = build_endpoint(stats, lambda: [WEB], lambda: FACTS, lambda: migrating)
    server = MetricsServer(endpoint, "127.0.0.1:0", ready=ready.is_set, ssl_context=context)
    server.start()
    return server


def get(url: str, accept: str = "", context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_metrics_text_openmetrics_health_and_readiness(ready: threading.Event) -> None:
    server = serve(ready)
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, kind, body = get(base + "/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        assert "# TYPE virt_agent_node_capacity gauge" in body
        assert "virt_agent_build_info{" in body and "process_resident_memory_bytes" in body
        status, kind, body = get(base + "/metrics", accept="application/openmetrics-text")
        assert status == 200 and kind.startswith("application/openmetrics-text")
        # The strict OpenMetrics parser: one # EOF at the end, counters as families.
        families = {f.name: f for f in openmetrics_families(body)}
        assert families["kubevirt_vmi_cpu_usage_seconds"].type == "counter"
        assert families["kubevirt_vmi_cpu_usage_seconds"].samples[0].value == 12.5
        assert families["virt_agent_grpc_request_duration_seconds"].type == "histogram"
        request = urllib.request.Request(base + "/metrics", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.headers["Content-Encoding"] == "gzip"
            assert b"kubevirt_vmi_info{" in gzip.decompress(reply.read())
        assert get(base + "/healthz")[0] == 200
        status, _, body = get(base + "/readyz")
        assert status == 503 and "libvirt" in body
        ready.set()
        assert get(base + "/readyz")[0] == 200
        assert get(base + "/nothing")[0] == 404
    finally:
        server.stop()


@pytest.mark.skipif(  # allowed-skip: CI installs openssl (hack/install-deps.sh)
    shutil.which("openssl") is None, reason="needs openssl"
)
def test_tls_with_client_certificates(tmp_path: Path, ready: threading.Event) -> None:
    make_certificates(tmp_path)
    context = server_ssl_context(
        str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem")
    )
    server = serve(ready, context)
    url = f"https://127.0.0.1:{server.port}/healthz"
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client.check_hostname = False
    try:
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            get(url, context=client)  # no client certificate: refused
        client.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        assert get(url, context=client)[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(url.replace("https", "http"))  # no plaintext on a TLS port
    finally:
        server.stop()


# -- promtool and deploy/ ------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.skipif(  # allowed-skip: CI installs prometheus (hack/install-deps.sh)
    shutil.which("promtool") is None, reason="needs promtool"
)
def test_promtool_finds_no_problem_in_a_scrape(ready: threading.Event) -> None:
    server = serve(ready)
    try:
        body = get(f"http://127.0.0.1:{server.port}/metrics")[2]
    finally:
        server.stop()
    assert all(spec.name.removesuffix("_total") in body for spec in VM_SPECS if spec.per_vm)
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True, timeout=30)  # fmt: skip
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


def test_a_taken_metrics_port_stops_the_agent_naming_the_setting() -> None:
    from agent.config import ConfigError, Settings
    from agent.metrics.setup import start_metrics
    from agent.ports import HostFacts

    class Hypervisor(FakeStats):
        def subscribe(self, handler: object) -> None:
            pass

        def versions(self) -> tuple[str, str]:
            return "9.0.0", "7.2.0"

        def connected(self) -> bool:
            return True

    class Node:
        registry = types.SimpleNamespace(records=list)
        virt_type = "qemu"

    class Host:
        def facts(self) -> HostFacts:
            return HostFacts("node-a", 8, 16 << 30, "cpu")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = Settings(metrics_listen=address, metrics_insecure=True)
        with pytest.raises(
            ConfigError, match=f"metrics-listen: cannot serve on {address}: .*in use"
        ):
            start_metrics(
                settings, Hypervisor([]), Node(), Host(), types.SimpleNamespace(ready=True)
            )
    settings = Settings(metrics_listen="127.0.0.1:0", metrics_insecure=True)
    stop = start_metrics(
        settings, Hypervisor([]), Node(), Host(), types.SimpleNamespace(ready=True)
    )
    stop()
