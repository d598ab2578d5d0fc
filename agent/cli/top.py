"""``vmctl top``: the node's VMs with CPU %, memory and network rates, from two scrapes of
the agent's /metrics (its ``--metrics-listen``) an interval apart."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

from agent.cli.commands import Failure, UsageError
from agent.cli.output import render_table
from agent.metrics.top import TopRow, parse_usage, top_rows

__all__ = ["ENV_METRICS", "top"]

ENV_METRICS = "VMCTL_METRICS"


def _context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.metrics.startswith("https:"):
        return None
    try:
        context = ssl.create_default_context(cafile=args.ca_file)
        if args.cert_file:
            context.load_cert_chain(args.cert_file, args.key_file)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use the TLS files: {exc}") from None
    if args.server_name is None and args.ca_file:
        context.check_hostname = False  # the agent's certificate names the agent, not the IP
    return context


def _scrape(url: str, context: ssl.SSLContext | None, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
            return str(reply.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        raise Failure(f"cannot read the agent's metrics at {url}: {exc}") from None


def _size(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for suffix in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or suffix == "Ti":
            return f"{value:.0f}{suffix}{unit}" if not suffix else f"{value:.1f}{suffix}{unit}"
        value /= 1024
    return "-"  # pragma: no cover


def _line(row: TopRow) -> list[str]:
    cpu = "-" if row.cpu_percent is None else f"{row.cpu_percent:.1f}%"
    return [row.namespace, row.name, row.phase.capitalize() or "-", cpu,
            _size(row.memory_bytes), _size(row.rx_per_second, "B/s"),
            _size(row.tx_per_second, "B/s")]  # fmt: skip


def top(args: argparse.Namespace) -> int:
    if not args.metrics:
        raise UsageError(
            f"top reads the agent's /metrics: give --metrics URL (or {ENV_METRICS}), e.g. "
            "https://node-a:8443/metrics"
        )
    context = _context(args)
    started = time.monotonic()
    before = parse_usage(_scrape(args.metrics, context, args.timeout))
    time.sleep(args.interval)  # the measurement window of the rates
    after = parse_usage(_scrape(args.metrics, context, args.timeout))
    rows = top_rows(before, after, time.monotonic() - started)
    if not args.all_namespaces:
        rows = [row for row in rows if row.namespace == args.namespace]
    headers = ["NAMESPACE", "NAME", "PHASE", "CPU", "MEMORY", "RX", "TX"]
    sys.stdout.write(render_table(headers, [_line(row) for row in rows]))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        default=os.environ.get(ENV_METRICS, ""),
        metavar="URL",
        help=f"the agent's /metrics URL (env {ENV_METRICS}); https uses the TLS options",
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="rate window (default 2)"
    )
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace, not just -n"
    )
