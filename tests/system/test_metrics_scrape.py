"""Metrics with a real Prometheus (issue 11): an agent with --metrics-listen in a node of its
own, two TCG guests, and Debian's prometheus started by pid inside the node's network
namespace, scraping the agent every 2 s.

    web     a masquerade NIC; the test pings it to move its network counters
    still   no NIC; its QEMU is frozen with SIGSTOP (and resumed) by the last test
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.system.agentproc import AgentProcess, guest_vm
from tests.testbed.nodebox import GuestImage, NodeBox, World
from tests.testbed.wait import wait_for

METRICS_PORT = 9464
PROMETHEUS_PORT = 9490
BOOT_TIMEOUT = 150.0
SCRAPE_BOUND = 5.0

# Run inside the node: GET a URL, print the seconds it took, then the body.
_GET = r"""
import sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
started = time.monotonic()
with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as reply:
    body = reply.read().decode()
sys.stdout.write(f"{time.monotonic() - started:.3f}\n{body}")
"""

_TRAFFIC = r"""
import socket, sys, urllib.request
guest = sys.argv[1]
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    for _ in range(100):
        udp.sendto(b"x" * 1000, (guest, 9))
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for _ in range(10):
    with opener.open(f"http://{guest}/", timeout=10) as reply:
        reply.read()
"""


@dataclass
class Monitored:
    node: NodeBox
    agent: AgentProcess
    prometheus: subprocess.Popen[bytes]
    web_ip: str
    still_pid: int

    def get(self, url: str, timeout: float = 20.0) -> tuple[float, str]:
        proc = self.node.exec([sys.executable, "-c", _GET, url, str(timeout)], timeout=timeout + 15)
        assert proc.returncode == 0, f"GET {url}: {proc.stderr}"
        seconds, _, body = str(proc.stdout).partition("\n")
        return float(seconds), body

    def scrape(self) -> tuple[float, str]:
        return self.get(f"http://{self.node.uplink_ip}:{METRICS_PORT}/metrics")

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = (
            f"http://{self.node.uplink_ip}:{PROMETHEUS_PORT}/api/v1/query?"
            + urllib.parse.urlencode({"query": promql})
        )
        reply = json.loads(self.get(url)[1])
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def ready(self) -> bool:
        assert self.prometheus.poll() is None, "prometheus exited"
        proc = self.node.exec(
            [sys.executable, "-c", _GET, f"http://{self.node.uplink_ip}:{PROMETHEUS_PORT}/-/ready",
             "5"], timeout=20,
        )  # fmt: skip
        return proc.returncode == 0

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def start_prometheus(node: NodeBox, folder: Path) -> subprocess.Popen[bytes]:
    """Debian's prometheus, by pid, with its own config and data folder, in the node."""
    folder.mkdir()
    config = folder / "prometheus.yml"
    config.write_text(
        textwrap.dedent(f"""\
        global:
          scrape_interval: 2s
          scrape_timeout: 2s
        scrape_configs:
          - job_name: virt-agent
            static_configs:
              - targets: ["{node.uplink_ip}:{METRICS_PORT}"]
        """)
    )
    with open(folder / "log", "ab") as log:
        return node.spawn(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={node.uplink_ip}:{PROMETHEUS_PORT}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def mon(test_guest: GuestImage) -> Iterator[Monitored]:
    world = World.start()
    try:
        node = NodeBox.start(world, "node-a", 1)
        agent = AgentProcess(
            node=node,
            guest=test_guest,
            dir=node.dir / "agent",
            extra_args=[
                "--metrics-listen", f"{node.uplink_ip}:{METRICS_PORT}", "--metrics-insecure",
            ],
        )  # fmt: skip
        agent.start()
        prometheus = None
        try:
            nic = [{"name": "default", "masquerade": {}}]
            agent.apply(guest_vm("web", memory="160Mi", interfaces=nic, grace=0))
            agent.apply(guest_vm("still", memory="160Mi", grace=0))
            for name in ("web", "still"):
                agent.wait_console(name, "VIRT-AGENT-READY", timeout=BOOT_TIMEOUT)
            web, still = agent.get("web"), agent.get("still")
            prometheus = start_prometheus(node, node.dir / "prometheus")
            monitored = Monitored(
                node=node,
                agent=agent,
                prometheus=prometheus,
                web_ip=web.status.interfaces[0].ip_addresses[0],
                still_pid=still.status.qemu_pid,
            )
            wait_for(
                lambda: monitored.ready(), 60, 0.5,
                lambda: "prometheus ready:\n" + (node.dir / "prometheus" / "log").read_text(),
            )  # fmt: skip
            yield monitored
        finally:
            if prometheus is not None:
                stop(prometheus)
            agent.stop()
    finally:
        world.stop()


def series(text: str, name: str, vm: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") and
            f'name="{vm}"' in line]  # fmt: skip


def test_prometheus_sees_the_cpu_time_of_a_guest_grow(mon: Monitored) -> None:
    promql = 'kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web",node="node-a"}'
    first = wait_for(
        lambda: mon.value(promql), 60, 1.0, lambda: f"{promql} in Prometheus: {mon.query(promql)}"
    )
    assert first > 0
    wait_for(
        lambda: (mon.value(promql) or 0) > first, 60, 1.0, lambda: f"{promql} to grow past {first}"
    )
    assert mon.value('up{job="virt-agent"}') == 1


def test_network_counters_grow_with_traffic_sent_to_the_guest(mon: Monitored) -> None:
    received = 'kubevirt_vmi_network_receive_bytes_total{name="web",interface="default"}'
    sent = 'kubevirt_vmi_network_transmit_bytes_total{name="web",interface="default"}'
    before = {q: wait_for(lambda q=q: mon.value(q), 60, 1.0, f"{q} in Prometheus") for q in
              (received, sent)}  # fmt: skip
    # Into the guest: 100 UDP datagrams of 1000 bytes; out of it: 10 HTTP answers.
    traffic = mon.node.exec([sys.executable, "-c", _TRAFFIC, mon.web_ip], timeout=60)
    assert traffic.returncode == 0, traffic.stderr
    grown = {received: 100 * 1000, sent: 10 * 100}
    for promql, old in before.items():
        wait_for(
            lambda promql=promql, old=old: (mon.value(promql) or 0) >= old + grown[promql],
            60,
            1.0,
            lambda promql=promql, old=old: f"{promql} to grow by {grown[promql]} from {old}",
        )


def test_promtool_finds_no_problem_in_a_real_scrape(mon: Monitored) -> None:
    _, text = mon.scrape()
    assert series(text, "kubevirt_vmi_vcpu_seconds_total", "still")
    assert series(text, "kubevirt_vmi_memory_resident_bytes", "web")
    assert series(text, "kubevirt_vmi_storage_read_traffic_bytes_total", "web") == []  # no disk
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)  # fmt: skip
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    assert mon.get(f"http://{mon.node.uplink_ip}:{METRICS_PORT}/readyz")[1] == "ok\n"


def test_vmctl_top_shows_the_guests(mon: Monitored) -> None:
    url = f"http://{mon.node.uplink_ip}:{METRICS_PORT}/metrics"
    top = mon.node.exec(
        [sys.executable, "-m", "agent.cli.main", "top", "--metrics", url, "--interval", "1"],
        timeout=60,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert top.returncode == 0, top.stderr
    rows = {line.split()[1]: line.split() for line in str(top.stdout).splitlines()[1:]}
    assert set(rows) == {"web", "still"}
    assert rows["web"][2] == "Running" and rows["web"][3].endswith("%")
    assert rows["web"][4].endswith("Mi")  # QEMU's resident memory


def test_a_frozen_guest_never_stalls_a_scrape(mon: Monitored) -> None:
    # Only the QEMU of a guest this module started, found through the agent's status.
    assert mon.still_pid in mon.node.qemu_pids()
    os.kill(mon.still_pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            seconds, text = mon.scrape()
            assert seconds <= SCRAPE_BOUND
            assert series(text, "kubevirt_vmi_cpu_usage_seconds_total", "web")
            assert series(text, "kubevirt_vmi_network_receive_bytes_total", "web")
            assert series(text, "kubevirt_vmi_info", "still")  # still known, still a VM
    finally:
        os.kill(mon.still_pid, signal.SIGCONT)
    _, text = mon.scrape()
    misses = [line for line in text.splitlines()
              if line.startswith('virt_agent_scrape_misses_total{reason="timeout"}')]  # fmt: skip
    assert misses and float(misses[0].split()[-1]) >= 1, misses
    wait_for(
        lambda: series(mon.scrape()[1], "kubevirt_vmi_vcpu_seconds_total", "still"),
        30,
        1.0,
        "the resumed guest's vCPU metrics back",
    )
