"""Network plumbing: one VM's nft change with 1, 100 and 1,000 VMs already plumbed, and the
table's rule and element counts at each size.

The agent's network layer (RoutedNetwork with its real adapters: taps through pyroute2, the
``nft`` CLI, its DHCP server) runs in a child process inside a network namespace this
benchmark creates and deletes; nothing touches the root namespace. Baseline: the same VM's
element changes written by hand as one ``nft -j -f -`` transaction at the same table size.
"""

from __future__ import annotations

import ipaddress
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.harness import ROOT, Bench

TITLE = "one VM's nft change with 1/100/1000 VMs plumbed (netns)"
BASELINE = "the same VM's element changes as one hand-written `nft -j -f -` transaction"


def vm_spec(name: str) -> Any:
    from agent.spec import parse_vm

    uid = str(uuid.uuid5(uuid.NAMESPACE_DNS, name))
    return parse_vm({
        "metadata": {"namespace": "bench", "name": name, "uid": uid},
        "spec": {"template": {"spec": {
            "domain": {"memory": {"guest": "64Mi"}, "devices": {"interfaces": [
                {"name": "default", "masquerade": {}, "ports": [{"port": 80}]}]}},
            "networks": [{"name": "default", "pod": {}}],
        }}},
    })  # fmt: skip


def inner(quick: bool) -> dict[str, Any]:
    """Runs inside the namespace: plumbs VMs and times one more VM's change at each size."""
    from agent.adapters.conntrack import ConntrackCli
    from agent.adapters.netlink import PyRoute2Links
    from agent.adapters.nft import Nftables, NftCli
    from agent.network import ruleset
    from agent.network.dhcpd import DhcpServer
    from agent.network.plan import NetworkConfig
    from agent.network.ruleset import FirewallState
    from agent.network.service import RoutedNetwork

    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))  # one DHCP socket per tap
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # An uplink of usual MTU (a tap refuses lo's 65536); it only exists in this namespace.
    subprocess.run(["ip", "link", "add", "uplink0", "type", "veth", "peer", "uplink1"], check=True)
    config = NetworkConfig(
        cidr=ipaddress.IPv4Network("10.250.0.0/16"), node_ports=(20000, 21999), uplink="uplink0"
    )
    dhcp = DhcpServer()
    dhcp.start()
    nft = Nftables()  # the agent's: libnftables in process
    cli = Nftables(NftCli())  # the baseline's: the nft binary
    net = RoutedNetwork(config, PyRoute2Links(), nft, ConntrackCli(), dhcp)
    net.start()
    net.reconcile({})
    syncs: list[float] = []
    sync = net._sync_firewall  # timed from outside: the agent's own per-change firewall step

    def timed_sync(live: Any) -> None:
        started = time.perf_counter()
        sync(live)
        syncs.append(time.perf_counter() - started)

    net._sync_firewall = timed_sync  # type: ignore[method-assign]

    def plug(name: str) -> tuple[str, Any, Any]:
        domain, spec = f"bench_{name}", vm_spec(name)
        allocation = net.allocate(domain, spec, None)
        net.plug(domain, spec, allocation)
        return domain, spec, allocation

    out: dict[str, Any] = {}
    count, rounds = 0, (3 if quick else 15)
    for size in [1, 100] if quick else [1, 100, 1000]:
        started = time.monotonic()
        while count < size:
            plug(f"vm-{count:04d}")
            count += 1
        result: dict[str, Any] = {"fill_s": time.monotonic() - started}
        warm = plug(f"warm-{size}")  # one untimed round: caches, the kernel's set resize
        net.unplug(*warm)
        result.update(sync=[], plug=[], raw=[])
        for r in range(rounds):
            syncs.clear()
            began = time.perf_counter()
            domain, spec, allocation = plug(f"probe-{size}-{r}")
            result["plug"].append(time.perf_counter() - began)
            result["sync"].append(syncs[-1])
            state = net._live[domain][1].firewall
            net.unplug(domain, spec, allocation)
            add = ruleset.element_commands(config.table, FirewallState(), state)
            began = time.perf_counter()
            cli.apply(add)
            result["raw"].append(time.perf_counter() - began)
            cli.apply(ruleset.element_commands(config.table, state, FirewallState()))
        listing = nft.list_table("inet", config.table) or []
        counts = ruleset.listing_summary(listing)
        result["rules"] = sum(v for k, v in counts.items() if not k.startswith("set:"))
        result["elements"] = sum(v for k, v in counts.items() if k.startswith("set:"))
        out[str(size)] = result
    net.stop()
    dhcp.stop()
    return out


def run(bench: Bench, quick: bool) -> None:
    netns = f"vabench{os.getpid()}-nft"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.bench_nft", "--inner"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [*argv, *(["--quick"] if quick else [])],
            capture_output=True, text=True, timeout=900, cwd=ROOT, env=env, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"inner run failed: {proc.stderr[-2000:]}")
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    for size, r in results.items():
        bench.row(f"nft change for one VM at {size} VMs", r["sync"], r["raw"],
                  rules=r["rules"], elements=r["elements"])  # fmt: skip
        bench.row(f"whole plug of one VM (tap+DHCP+nft) at {size} VMs", r["plug"], None)
        bench.row(f"rules in the table at {size} VMs", [r["rules"]], None, unit="rules", scale=1)
        bench.note(f"{size} VMs: {r['elements']} set/map elements, plumbed in {r['fill_s']:.1f} s")
    sizes = list(results)
    first = bench.rows[0]["agent"]["median"]
    last = bench.rows[-3]["agent"]["median"]
    bench.target(
        f"nft change at {sizes[-1]} VMs <= 1.5x that at {sizes[0]}",
        f"{last:.1f} ms vs {first:.1f} ms ({last / first:.2f}x)",
        last <= 1.5 * first,
    )


if __name__ == "__main__" and "--inner" in sys.argv:
    print(json.dumps(inner("--quick" in sys.argv)))
