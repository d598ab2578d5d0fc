"""vmctl's commands: each takes the parsed arguments, talks to the agent, prints, and returns
the exit code (``agent.cli.main`` parses and maps the errors raised here to exit codes)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2
from agent.cli.instancetypes import Catalog
from agent.cli.kubevirt import Manifest, ManifestError, Manifests, load_manifests
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
from agent.cli.progress import LiveLine, VMProgress
from agent.cli.validate import check_manifest, validate_text
from agent.client import AgentCallError, AgentClient, TLSOptions

__all__ = [
    "VERBS",
    "Failure",
    "UsageError",
    "Verb",
    "apply",
    "console",
    "describe",
    "either",
    "get",
    "lifecycle",
    "node",
    "validate",
    "watch",
]


class Failure(Exception):
    """The request failed (exit code 1); the message is a sentence for the operator."""


class UsageError(Exception):
    """The user's input cannot be used (exit code 2)."""


@dataclass(frozen=True, slots=True)
class Verb:
    name: str
    summary: str
    done: str
    wait_for: tuple[str, ...] | None = None  # phases that end --wait; None: the VM is gone
    waits: bool = True


VERBS = {
    verb.name: verb
    for verb in (
        Verb("start", "Boot a stopped VM.", "started", ("Running",)),
        Verb(
            "stop",
            "Shut a VM down: ACPI, then destroy after the grace period.",
            "stopped",
            ("Stopped", "Succeeded", "Failed"),
        ),
        Verb("restart", "Reboot a VM's guest (or power-cycle it).", "restarted", waits=False),
        Verb("pause", "Suspend a VM's vCPUs.", "paused", ("Paused",)),
        Verb("unpause", "Resume a paused VM.", "unpaused", ("Running",)),
        Verb("delete", "Stop a VM and remove it with all its resources.", "deleted"),
    )
}


def either(phases: tuple[str, ...]) -> str:
    return " or ".join(phases) if len(phases) < 3 else f"{', '.join(phases[:-1])} or {phases[-1]}"


def connect(args: argparse.Namespace) -> AgentClient:
    """A client for the agent the connection options name (for agent.cli.migrate)."""
    return _connect(args)


def _connect(args: argparse.Namespace) -> AgentClient:
    files = (args.ca_file, args.cert_file, args.key_file, args.server_name)
    if args.insecure and any(files):
        raise UsageError("--insecure means no TLS: give it or the TLS flags, not both")
    if not any(files):
        if not args.agent.startswith("unix:") and not args.insecure:
            raise UsageError(
                f"{args.agent} would be plaintext: give --ca-file (and --cert-file/--key-file "
                "for mutual TLS), or --insecure to send VM specs and secrets unencrypted"
            )
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


def apply(args: argparse.Namespace) -> int:
    text = _read_input(args.filename)
    loaded = load_manifests(text, default_namespace=args.namespace, catalog=_catalog(args))
    _say_what_is_left_out(loaded)
    if args.dry_run:
        for manifest in loaded.vms:  # what the agent's Apply would say about it
            try:
                check_manifest(manifest)
            except ManifestError as exc:
                raise ManifestError(exc.path, exc.problem, document=manifest.document) from None
        sys.stdout.write("---\n".join(render_yaml(to_document(m.vm)) for m in loaded.vms))
        return 0
    with _connect(args) as client:
        for manifest in loaded.vms:
            meta = manifest.vm.metadata
            ref = f"{meta.namespace}/{meta.name}"
            if getattr(args, "wait", False):
                _apply_and_wait(client, manifest, args.wait_timeout, _apply_timeout(args, manifest))
                continue
            with _explained("apply", ref):
                # A VMI is runStrategy Once: the agent starts it itself (see kubevirt.py).
                state = _applied(client.apply(manifest.vm, timeout=_apply_timeout(args, manifest)))
            print(f"vm {ref} {state}")
    return 0


# What ``apply --wait`` waits for: a VM the agent starts runs; the others only settle.
_SETTLED = {"Halted": ("Stopped",), "Manual": ("Stopped", "Running", "Paused")}


def _apply_timeout(args: argparse.Namespace, manifest: Manifest) -> float:
    """The Apply call's deadline: the agent answers once the disks are ready, so one that
    pulls a containerDisk or imports a DataVolume gets ``--pull-timeout``."""
    spec = manifest.vm.spec
    transfers = bool(spec.data_volume_templates) or any(
        volume.HasField("container_disk") for volume in spec.template.spec.volumes
    )
    return max(args.timeout, args.pull_timeout) if transfers else float(args.timeout)


def _apply_and_wait(
    client: AgentClient, manifest: Manifest, timeout: float, apply_timeout: float
) -> None:
    """Apply while a watch shows the pull's progress and the phases (Apply returns once
    the disks are ready), then wait until the VM runs or settles."""
    meta = manifest.vm.metadata
    ref = f"{meta.namespace}/{meta.name}"
    phases = _SETTLED.get(manifest.vm.spec.run_strategy, ("Running",))
    progress = VMProgress(LiveLine(sys.stderr), ref)
    outcome: list[str | Failure] = []
    done = threading.Event()

    def watch() -> None:
        try:
            outcome.append(_wait(client, meta.namespace, meta.name, phases, timeout, progress))
        except Failure as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=watch, name=f"wait {ref}", daemon=True).start()
    with _explained("apply", ref):
        state = _applied(client.apply(manifest.vm, timeout=apply_timeout))
    progress.end()
    print(f"vm {ref} {state}", flush=True)
    done.wait(timeout + 5)
    progress.end()
    if not outcome:
        raise Failure(f"timed out after {timeout:g}s waiting for vm {ref} to be {either(phases)}")
    if isinstance(outcome[0], Failure):
        raise outcome[0]
    print(f"vm {ref} is {outcome[0]}")


def _say_what_is_left_out(loaded: Manifests) -> None:
    """One line for documents of other kinds, one for scheduler fields (see webhook.py)."""
    if loaded.skipped:
        skipped = ", ".join(str(s) for s in loaded.skipped)
        print(f"vmctl: skipped {skipped}: not a VirtualMachine or VM instance", file=sys.stderr)
    ignored = [
        f"{m.vm.metadata.namespace}/{m.vm.metadata.name} {', '.join(m.ignored)}"
        for m in loaded.vms
        if m.ignored
    ]
    if ignored:
        print(
            f"vmctl: warning: ignored fields only a cluster scheduler uses: {'; '.join(ignored)}",
            file=sys.stderr,
        )


def validate(args: argparse.Namespace) -> int:
    refused = 0
    for filename in args.filename:
        text = _read_input(filename)
        for verdict in validate_text(
            text, default_namespace=args.namespace, catalog=_catalog(args)
        ):
            print(f"{filename}: {verdict.line()}")
            refused += not (verdict.accepted or verdict.skipped)
    return 2 if refused else 0


def _catalog(args: argparse.Namespace) -> Catalog:
    """KubeVirt's common instancetypes and preferences, then those in --instancetypes DIR."""
    catalog = Catalog.with_builtins()
    if args.instancetypes:
        folder = Path(args.instancetypes)
        if not folder.is_dir():
            raise UsageError(f"--instancetypes {folder}: not a folder")
        catalog.add_folder(folder)
    return catalog


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


def get(args: argparse.Namespace) -> int:
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


def describe(args: argparse.Namespace) -> int:
    with _connect(args) as client, _explained("get", f"{args.namespace}/{args.name}"):
        vm = client.get(args.namespace, args.name)
    sys.stdout.write(describe_vm(vm, datetime.now(UTC)))
    return 0


def lifecycle(args: argparse.Namespace) -> int:
    verb = VERBS[args.command]
    ref = f"{args.namespace}/{args.name}"
    with _connect(args) as client:
        with _explained(verb.name, ref):
            vm = _call_verb(client, args)
        phase = f" (phase {phase_name(vm.status.phase)})" if vm is not None else ""
        print(f"vm {ref} {verb.done}{phase}")
        if getattr(args, "wait", False):
            progress = VMProgress(LiveLine(sys.stderr), ref) if verb.name == "start" else None
            reached = _wait(
                client, args.namespace, args.name, verb.wait_for, args.wait_timeout, progress
            )
            if progress is not None:
                progress.end()
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
    progress: VMProgress | None = None,
) -> str:
    """Watch until the VM is in one of ``phases`` (None: deleted); returns what was seen.
    ``progress`` is shown every update of the VM (pulls, imports, phase changes).

    The watch opens with a snapshot, so a VM that is already there needs no change.
    """
    ref = f"{namespace}/{name}"
    want = "deleted" if phases is None else either(phases)
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
            if progress is not None:
                progress.update(event.vm)
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


def watch(args: argparse.Namespace) -> int:
    namespace = "" if args.all_namespaces else args.namespace
    with _connect(args) as client, _explained("watch VMs"):
        for event in client.watch(namespace, args.selector):
            print(watch_line(event, datetime.now(UTC)), flush=True)
    return 0


def console(args: argparse.Namespace) -> int:
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


def node(args: argparse.Namespace) -> int:
    with _connect(args) as client, _explained("read the node"):
        node = client.node()
    if args.output == "json":
        sys.stdout.write(render_json(to_document(node)))
    elif args.output == "yaml":
        sys.stdout.write(render_yaml(to_document(node)))
    else:
        sys.stdout.write(describe_node(node))
    return 0
