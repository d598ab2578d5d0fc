"""Entry point of ``vmctl``, the operator's command line for one node's virt-agent.

Exit codes: 0 success; 1 the agent refused or failed the request, or a ``--wait`` did not
see the expected phase; 2 a usage error or unusable input (bad flags, unreadable file, a
manifest that cannot be mapped: the user's input, not the agent, is at fault); 130
interrupted. Errors are one ``vmctl: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from agent.cli import commands, top
from agent.cli.commands import VERBS, Failure, UsageError, Verb, either
from agent.cli.kubevirt import ManifestError
from agent.cli.migrate import add_migration_commands
from agent.cli.output import (
    error_sentence,
)
from agent.client import AgentCallError
from agent.defaults import PULL_TIMEOUT_SECONDS, UNIX_SOCKET

__all__ = ["build_parser", "main"]

ENV_AGENT = "VMCTL_AGENT"
DEFAULT_AGENT = f"unix:{UNIX_SOCKET}"
DEFAULT_WAIT_SECONDS = 300.0
Parser = argparse.ArgumentParser

_EXAMPLES = """\
examples:
  vmctl apply -f fedora.yaml             create or update the VMs of a KubeVirt manifest
  vmctl apply -f fedora.yaml --dry-run   check it as the agent would, print what would be sent
  vmctl apply -f fedora.yaml --wait      show the image pull's progress, wait until it runs
  vmctl validate -f a.yaml -f b.yaml     per document: accepted, or the first field that blocks it
  vmctl get -A                           list the VMs of every namespace
  vmctl stop fedora --wait               shut a VM down and wait until it is stopped
  vmctl console fedora -f --tail 50      follow a VM's serial console
  vmctl migrate fedora --to 10.0.0.12:9090 --wait   move a running VM to another node
"""


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
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, run: Callable[[argparse.Namespace], int]) -> Parser:
        sub: Parser = subcommands.add_parser(
            name, parents=[common], help=summary, description=summary
        )
        sub.set_defaults(run=run)
        return sub

    _add_manifest_commands(command)
    _add_get(
        command("get", "Show one VM, or list the VMs of a namespace.", commands.get), name=True
    )
    _add_get(command("list", "List the VMs of a namespace (or of all of them).", commands.get))
    describe = command(
        "describe",
        "Show a VM in detail: status, conditions, interfaces and disks. (Recent events are "
        "not shown: the agent keeps no event history.)",
        commands.describe,
    )
    describe.add_argument("name", metavar="NAME", help="the VM")
    for verb in VERBS.values():
        _add_verb(command(verb.name, verb.summary, commands.lifecycle), verb)
    add_migration_commands(command, commands.connect)
    watch = command("watch", "Print VM events as they happen, one line each.", commands.watch)
    _add_selection(watch)
    console = command("console", "Print a VM's serial console log.", commands.console)
    console.add_argument("name", metavar="NAME", help="the VM")
    console.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new output as it comes"
    )
    console.add_argument(
        "--tail", type=_count, default=0, metavar="N", help="only the last N lines (0: all)"
    )
    node = command("node", "Show the node: capacity, versions and VM counts.", commands.node)
    node.add_argument("-o", "--output", choices=("json", "yaml"), help="output format")
    top.add_arguments(command("top", "Show VMs' CPU use, memory and network rates.", top.top))
    return parser


def _add_manifest_commands(command: Callable[[str, str, Callable[..., int]], Parser]) -> None:
    _add_apply(command("apply", "Create or update VMs from a KubeVirt manifest.", commands.apply))
    _add_validate(command("validate", "Check manifests as the agent would.", commands.validate))


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
    group.add_argument(
        "--insecure",
        action="store_true",
        default=default(False),
        help="talk plaintext to a host:port agent (no TLS flags); unix sockets never need it",
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
    _add_instancetypes(parser)
    parser.add_argument(
        "--wait",
        action="store_true",
        help="show image pulls and imports, then wait until each VM runs (Halted: is stopped)",
    )
    _add_wait_timeout(parser)
    parser.add_argument(
        "--pull-timeout",
        type=_seconds,
        default=PULL_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="deadline of an Apply that pulls a containerDisk or imports a DataVolume (it "
        f"answers once the disks are ready; default {PULL_TIMEOUT_SECONDS:g}, the agent's own)",
    )


def _add_instancetypes(parser: Parser) -> None:
    parser.add_argument(
        "--instancetypes",
        metavar="DIR",
        help="folder of instancetype and preference YAML files (besides KubeVirt's common ones)",
    )


def _add_validate(parser: Parser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        action="append",
        metavar="FILE",
        help="YAML file to check, repeatable ('-': stdin); prints one line per document",
    )
    _add_instancetypes(parser)


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


def _add_verb(parser: Parser, verb: Verb) -> None:
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
    target = "gone" if verb.wait_for is None else either(verb.wait_for)
    parser.add_argument("--wait", action="store_true", help=f"wait until the VM is {target}")
    _add_wait_timeout(parser)


def _add_wait_timeout(parser: Parser) -> None:
    parser.add_argument(
        "--wait-timeout",
        type=_seconds,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"give up waiting after this long (default {DEFAULT_WAIT_SECONDS:g})",
    )


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


if __name__ == "__main__":
    sys.exit(main())
