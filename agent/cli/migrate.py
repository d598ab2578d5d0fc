"""``vmctl migrate`` and ``vmctl migrations``: live migration from the operator's side."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.cli.progress import LiveLine, bar
from agent.client import AgentClient

__all__ = ["add_migration_commands", "progress_line"]

Parser = argparse.ArgumentParser
Command = Callable[[str, str, Callable[[argparse.Namespace], int]], Parser]
Connect = Callable[[argparse.Namespace], AgentClient]

_ENDED = (
    mpb.MIGRATION_STATE_SUCCEEDED,
    mpb.MIGRATION_STATE_FAILED,
    mpb.MIGRATION_STATE_CANCELLED,
)


def add_migration_commands(command: Command, connect: Connect) -> None:
    def migrate(args: argparse.Namespace) -> int:
        return _migrate(args, connect(args))

    def migrations(args: argparse.Namespace) -> int:
        return _list(args, connect(args))

    parser = command("migrate", "Move a running VM to another node, live.", migrate)
    parser.add_argument("name", nargs="?", metavar="NAME", help="the VM")
    parser.add_argument("--to", metavar="ADDR", help="the target node's agent (host:port)")
    parser.add_argument("--bandwidth", type=int, default=0, metavar="MIB", help="MiB/s limit")
    parser.add_argument(
        "--max-downtime", type=int, default=0, metavar="MS", help="largest pause (default 500)"
    )
    parser.add_argument("--post-copy", action="store_true", help="allow switching to post-copy")
    parser.add_argument("--auto-converge", action="store_true", help="allow vCPU throttling")
    parser.add_argument("--parallel", type=int, default=0, metavar="N", help="connections")
    parser.add_argument("--progress-timeout", type=int, default=0, metavar="S", help="default 150")
    parser.add_argument("--wait", action="store_true", help="show progress until it ends")
    parser.add_argument("--cancel", metavar="ID", help="cancel the migration ID instead")
    listing = command("migrations", "List this node's recent migrations.", migrations)
    listing.add_argument("name", nargs="?", metavar="NAME", help="only this VM's")


def _migrate(args: argparse.Namespace, client: AgentClient) -> int:
    with client:
        if args.cancel:
            migration = client.cancel_migration(args.cancel)
            print(f"migration {migration.id}: cancel requested ({_state(migration.state)})")
            return 0
        if not args.name or not args.to:
            print("vmctl: migrate needs NAME and --to ADDR (or --cancel ID)", file=sys.stderr)
            return 2
        migration = client.migrate(
            args.namespace,
            args.name,
            args.to,
            bandwidth_mib=args.bandwidth,
            max_downtime_ms=args.max_downtime,
            post_copy=args.post_copy,
            auto_converge=args.auto_converge,
            parallel_connections=args.parallel,
            progress_timeout_seconds=args.progress_timeout,
        )
        print(f"migration {migration.id} of {args.namespace}/{args.name} started")
        if not args.wait:
            return 0
        last = migration
        line = LiveLine(sys.stderr)
        for update in client.watch_migration(migration.id):
            last = update
            line.show(progress_line(update))
        line.end()
        print(_outcome(last))
        return 0 if last.state == mpb.MIGRATION_STATE_SUCCEEDED else 1


def progress_line(migration: mpb.Migration) -> str:
    """``Running [#######.....] 120/256 MiB, 136 MiB left, iteration 2, dirty 3 MiB/s``."""
    p = migration.progress
    fraction = p.data_processed_bytes / max(p.data_total_bytes, 1)
    return (
        f"{_state(migration.state):9} {bar(fraction)} {_mib(p.data_processed_bytes)}/"
        f"{_mib(p.data_total_bytes)} MiB, {_mib(p.data_remaining_bytes)} MiB left, "
        f"iteration {p.memory_iteration}, dirty {_mib(p.dirty_rate_bytes_per_second)} MiB/s"
    )


def _outcome(migration: mpb.Migration) -> str:
    text = f"migration {migration.id}: {_state(migration.state)}"
    if migration.state == mpb.MIGRATION_STATE_SUCCEEDED:
        text += f" to {migration.target_node}, downtime {migration.downtime_ms} ms"
    if migration.message:
        text += f": {migration.message}"
    return text


def _list(args: argparse.Namespace, client: AgentClient) -> int:
    with client:
        items = client.list_migrations(args.namespace, args.name or "")
    print(f"{'ID':36}  {'VM':24}  {'ROLE':6}  {'STATE':9}  {'FROM':10}  {'TO':10}  STARTED")
    for m in items:
        role = "source" if m.role == mpb.MIGRATION_ROLE_SOURCE else "target"
        started = datetime.fromtimestamp(m.start_time.seconds, UTC).strftime("%H:%M:%S")
        vm = f"{m.namespace}/{m.name}"
        print(
            f"{m.id:36}  {vm:24}  {role:6}  {_state(m.state):9}  "
            f"{m.source_node:10}  {m.target_node:10}  {started}"
        )
    return 0


def _state(state: int) -> str:
    name = mpb.MigrationState.Name(mpb.MigrationState.ValueType(state))
    name = name.removeprefix("MIGRATION_STATE_")
    return name.replace("_", "").capitalize() if name != "POST_COPY" else "PostCopy"


def _mib(value: int) -> int:
    return value // (1 << 20)
