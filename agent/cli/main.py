"""Entry point of ``vmctl``, the operator's command line for one node's virt-agent.

Exit codes: 0 success; 1 the agent refused or failed the request, or a ``--wait`` did not
see the expected phase; 2 a usage error or unusable input (bad flags, unreadable file, a
manifest that cannot be mapped: the user's input, not the agent, is at fault); 130
interrupted. Errors are one ``vmctl: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2
from agent.cli.kubevirt import ManifestError, load_manifests
from agent.cli.output import (
    describe_node,
    describe_vm,
    error_sentence,
    phase_name,
    render_json,
    render_yaml,
    to_document,
    vm_table,
    watch_line,
)
from agent.client import AgentCallError, AgentClient, TLSOptions

__all__ = ["build_parser", "main"]

ENV_AGENT = "VMCTL_AGENT"
DEFAULT_AGENT = "unix:/run/virt-agent/agent.sock"
DEFAULT_WAIT_SECONDS = 300.0
Parser = argparse.ArgumentParser

_EXAMPLES = """\
examples:
  vmctl apply -f fedora.yaml             create or update the VMs of a KubeVirt manifest
  vmctl apply -f fedora.yaml --dry-run   print the VirtualMachine that would be applied
  vmctl get -A                           list the VMs of every namespace
  vmctl stop fedora --wait               shut a VM down and wait until it is stopped
  vmctl console fedora -f --tail 50      follow a VM's serial console
"""


class Failure(Exception):
    """The request failed (exit code 1); the message is a sentence for the operator."""


class UsageError(Exception):
    """The user's input cannot be used (exit code 2)."""


def main(argv: list[str] | None = None) -> int:
    """Run vmctl; returns the exit code (``--help`` included, which exits 0)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's usage error
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except AgentCallError as exc:  # not explained by the command: say what we can
        return _fail(error_sentence(exc, action=args.command), 1)
    except Failure as exc:
        return _fail(str(exc), 1)
    except (ManifestError, UsageError) as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vmctl console x | head`: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _fail(message: str, code: int) -> int:
    print(f"vmctl: {message}", file=sys.stderr)
    return code


# Parser.


def build_parser() -> argparse.ArgumentParser:
    # Connection options are accepted before and after the subcommand: the subcommands'
    # copies default to SUPPRESS so that they only override what was given.
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, defaults=False)
    parser = argparse.ArgumentParser(
        prog="vmctl",
        description="Operate the VMs of one node through its virt-agent.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, run: Callable[[argparse.Namespace], int]) -> Parser:
        sub: Parser = commands.add_parser(name, parents=[common], help=summary, description=summary)
        sub.set_defaults(run=run)
        return sub

    _add_apply(command("apply", "Create or update VMs from a KubeVirt manifest.", _apply))
    _add_get(command("get", "Show one VM, or list the VMs of a namespace.", _get), name=True)
    _add_get(command("list", "List the VMs of a namespace (or of all of them).", _get))
    describe = command(
        "describe",
        "Show a VM in detail: status, conditions, interfaces and disks. (Recent events are "
        "not shown: the agent keeps no event history.)",
        _describe,
    )
    describe.add_argument("name", metavar="NAME", help="the VM")
    for verb in _VERBS.values():
        _add_verb(command(verb.name, verb.summary, _lifecycle), verb)
    # migrate NAME --to AGENT goes here once MigrationService is implemented by the agent.
    watch = command("watch", "Print VM events as they happen, one line each.", _watch)
    _add_selection(watch)
    console = command("console", "Print a VM's serial console log.", _console)
    console.add_argument("name", metavar="NAME", help="the VM")
    console.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new output as it comes"
    )
    console.add_argument(
        "--tail", type=_count, default=0, metavar="N", help="only the last N lines (0: all)"
    )
    node = command("node", "Show the node: capacity, versions and VM counts.", _node)
    node.add_argument("-o", "--output", choices=("json", "yaml"), help="output format")
    return parser


def _add_connection_options(parser: Parser, *, defaults: bool) -> None:
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection options")
    group.add_argument(
        "--agent",
        metavar="ADDR",
        default=default(os.environ.get(ENV_AGENT) or DEFAULT_AGENT),
        help=f"agent address, host:port or unix:/path (env {ENV_AGENT}; default {DEFAULT_AGENT})",
    )
    group.add_argument(
        "-n", "--namespace", default=default("default"), help="namespace (default: default)"
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=default(30.0),
        metavar="SECONDS",
        help="deadline of each call to the agent (default 30)",
    )
    group.add_argument("--ca-file", default=default(None), help="CA bundle to verify the agent")
    group.add_argument("--cert-file", default=default(None), help="client certificate (mutual TLS)")
    group.add_argument("--key-file", default=default(None), help="client private key")
    group.add_argument(
        "--server-name", default=default(None), help="name expected in the agent's certificate"
    )


def _add_apply(parser: Parser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="YAML file with VirtualMachine/VirtualMachineInstance documents ('-': stdin)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resulting virt-agent VirtualMachine(s) as YAML; call nothing",
    )


def _add_selection(parser: Parser) -> None:
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace, not just -n"
    )
    parser.add_argument(
        "-l", "--selector", default="", metavar="SELECTOR", help="label selector: app=web,tier"
    )


def _add_get(parser: Parser, *, name: bool = False) -> None:
    if name:
        parser.add_argument("name", nargs="?", metavar="NAME", help="the VM (default: all)")
    else:
        parser.set_defaults(name=None)
    _add_selection(parser)
    parser.add_argument(
        "-o", "--output", choices=("wide", "json", "yaml"), help="output format (default table)"
    )


@dataclass(frozen=True, slots=True)
class _Verb:
    name: str
    summary: str
    done: str
    wait_for: tuple[str, ...] | None = None  # phases that end --wait; None: the VM is gone
    waits: bool = True


_VERBS = {
    verb.name: verb
    for verb in (
        _Verb("start", "Boot a stopped VM.", "started", ("Running",)),
        _Verb(
            "stop",
            "Shut a VM down: ACPI, then destroy after the grace period.",
            "stopped",
            ("Stopped", "Succeeded", "Failed"),
        ),
        _Verb("restart", "Reboot a VM's guest (or power-cycle it).", "restarted", waits=False),
        _Verb("pause", "Suspend a VM's vCPUs.", "paused", ("Paused",)),
        _Verb("unpause", "Resume a paused VM.", "unpaused", ("Running",)),
        _Verb("delete", "Stop a VM and remove it with all its resources.", "deleted"),
    )
}


def _add_verb(parser: Parser, verb: _Verb) -> None:
    parser.add_argument("name", metavar="NAME", help="the VM")
    if verb.name in ("stop", "delete"):
        parser.add_argument(
            "--grace-period",
            type=_count,
            metavar="N",
            help="seconds between the ACPI shutdown and a forced stop (default: the VM's "
            "terminationGracePeriodSeconds; 0: at once)",
        )
    if verb.name == "stop":
        parser.add_argument("--force", action="store_true", help="destroy at once, no ACPI")
    if verb.name == "restart":
        parser.add_argument(
            "--hard", action="store_true", help="power-cycle now (applies a pending spec)"
        )
    if not verb.waits:
        return
    target = "gone" if verb.wait_for is None else _either(verb.wait_for)
    parser.add_argument("--wait", action="store_true", help=f"wait until the VM is {target}")
    parser.add_argument(
        "--wait-timeout",
        type=_seconds,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"give up waiting after this long (default {DEFAULT_WAIT_SECONDS:g})",
    )


def _either(phases: tuple[str, ...]) -> str:
    return " or ".join(phases) if len(phases) < 3 else f"{', '.join(phases[:-1])} or {phases[-1]}"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


# Commands.


def _connect(args: argparse.Namespace) -> AgentClient:
    files = (args.ca_file, args.cert_file, args.key_file, args.server_name)
    if not any(files):
        return AgentClient(args.agent, timeout=args.timeout)
    tls = TLSOptions(*files)
    try:
        return AgentClient(args.agent, timeout=args.timeout, tls=tls)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use the TLS files: {exc}") from None


@contextlib.contextmanager
def _explained(action: str, vm: str | None = None) -> Iterator[None]:
    """Turn an agent error into a sentence about what was being done."""
    try:
        yield
    except AgentCallError as exc:
        raise Failure(error_sentence(exc, action=action, vm=vm)) from exc


def _apply(args: argparse.Namespace) -> int:
    text = _read_input(args.filename)
    manifests = load_manifests(text, default_namespace=args.namespace)
    if args.dry_run:
        sys.stdout.write("---\n".join(render_yaml(to_document(m.vm)) for m in manifests))
        return 0
    with _connect(args) as client:
        for manifest in manifests:
            meta = manifest.vm.metadata
            ref = f"{meta.namespace}/{meta.name}"
            with _explained("apply", ref):
                response = client.apply(manifest.vm)
                state = _applied(response)
                if manifest.start_after_apply and response.changed:
                    client.start(meta.namespace, meta.name)  # a VMI runs once: see kubevirt.py
                    state += " and started"
            print(f"vm {ref} {state}")
    return 0


def _applied(response: vm_service_pb2.ApplyVirtualMachineResponse) -> str:
    if not response.changed:
        return "unchanged"
    return "created" if response.vm.metadata.generation <= 1 else "configured"


def _read_input(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        return Path(filename).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {filename}: {exc}") from None


def _get(args: argparse.Namespace) -> int:
    if args.name and (args.all_namespaces or args.selector):
        raise UsageError("a NAME cannot be combined with -A or -l")
    with _connect(args) as client:
        if args.name:
            with _explained("get", f"{args.namespace}/{args.name}"):
                vms = [client.get(args.namespace, args.name)]
        else:
            namespace = "" if args.all_namespaces else args.namespace
            with _explained("list VMs"):
                vms = client.list(namespace, args.selector)
    if args.output in ("json", "yaml"):
        documents = [to_document(vm) for vm in vms]
        document = documents[0] if args.name else {"items": documents}
        render = render_json if args.output == "json" else render_yaml
        sys.stdout.write(render(document))
    elif not vms:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"vmctl: no VMs found in {where}", file=sys.stderr)
    else:
        sys.stdout.write(vm_table(vms, datetime.now(UTC), wide=args.output == "wide"))
    return 0


def _describe(args: argparse.Namespace) -> int:
    with _connect(args) as client, _explained("get", f"{args.namespace}/{args.name}"):
        vm = client.get(args.namespace, args.name)
    sys.stdout.write(describe_vm(vm, datetime.now(UTC)))
    return 0


def _lifecycle(args: argparse.Namespace) -> int:
    verb = _VERBS[args.command]
    ref = f"{args.namespace}/{args.name}"
    with _connect(args) as client:
        with _explained(verb.name, ref):
            vm = _call_verb(client, args)
        phase = f" (phase {phase_name(vm.status.phase)})" if vm is not None else ""
        print(f"vm {ref} {verb.done}{phase}")
        if getattr(args, "wait", False):
            reached = _wait(client, args.namespace, args.name, verb.wait_for, args.wait_timeout)
            print(f"vm {ref} is {reached}")
    return 0


def _call_verb(client: AgentClient, args: argparse.Namespace) -> vm_pb2.VirtualMachine | None:
    namespace, name = args.namespace, args.name
    if args.command == "start":
        return client.start(namespace, name)
    if args.command == "stop":
        return client.stop(
            namespace, name, grace_period_seconds=args.grace_period, force=args.force
        )
    if args.command == "restart":
        return client.restart(namespace, name, hard=args.hard)
    if args.command == "pause":
        return client.pause(namespace, name)
    if args.command == "unpause":
        return client.resume(namespace, name)
    client.delete(namespace, name, grace_period_seconds=args.grace_period)
    return None


def _wait(
    client: AgentClient,
    namespace: str,
    name: str,
    phases: tuple[str, ...] | None,
    timeout: float,
) -> str:
    """Watch until the VM is in one of ``phases`` (None: deleted); returns what was seen.

    The watch opens with a snapshot, so a VM that is already there needs no change.
    """
    ref = f"{namespace}/{name}"
    want = "deleted" if phases is None else _either(phases)
    present, last = False, "unknown"
    try:
        for event in client.watch(namespace, timeout=timeout):
            if event.type == vm_service_pb2.EVENT_TYPE_SYNCED:
                if phases is None and not present:
                    return "deleted"
                continue
            if event.vm.metadata.name != name:
                continue
            if event.type == vm_service_pb2.EVENT_TYPE_DELETED:
                if phases is None:
                    return "deleted"
                raise Failure(f"vm {ref} was deleted while waiting for it to be {want}")
            present, last = True, phase_name(event.vm.status.phase)
            if phases is not None and last in phases:
                return last
            # Failed in the snapshot may predate the request; only a change to Failed counts.
            if last == "Failed" and event.type == vm_service_pb2.EVENT_TYPE_MODIFIED:
                status = event.vm.status
                raise Failure(f"vm {ref} failed: {status.reason} {status.message}".rstrip())
    except AgentCallError as exc:
        if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise Failure(error_sentence(exc, action="watch", vm=ref)) from exc
        raise Failure(
            f"timed out after {timeout:g}s waiting for vm {ref} to be {want} (phase {last})"
        ) from exc
    raise Failure(f"the agent ended the watch before vm {ref} was {want}")


def _watch(args: argparse.Namespace) -> int:
    namespace = "" if args.all_namespaces else args.namespace
    with _connect(args) as client, _explained("watch VMs"):
        for event in client.watch(namespace, args.selector):
            print(watch_line(event, datetime.now(UTC)), flush=True)
    return 0


def _console(args: argparse.Namespace) -> int:
    ref = f"{args.namespace}/{args.name}"
    out = sys.stdout.buffer
    with _connect(args) as client, _explained("read the console of", ref):
        chunks = client.console_log(
            args.namespace, args.name, tail_lines=args.tail, follow=args.follow
        )
        for chunk in chunks:
            out.write(chunk)
            out.flush()
    return 0


def _node(args: argparse.Namespace) -> int:
    with _connect(args) as client, _explained("read the node"):
        node = client.node()
    if args.output == "json":
        sys.stdout.write(render_json(to_document(node)))
    elif args.output == "yaml":
        sys.stdout.write(render_yaml(to_document(node)))
    else:
        sys.stdout.write(describe_node(node))
    return 0


if __name__ == "__main__":
    sys.exit(main())
