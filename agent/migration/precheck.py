"""What the source checks before it answers MigrateVirtualMachine: the request and the VM
here, then the target's own checks (one short call that makes nothing there). A refusal
is the call's error and nothing has changed on either node."""

from __future__ import annotations

from agent.domain.lifecycle import VMService
from agent.domain.metadata import metadata_payload
from agent.errors import AlreadyExists, FailedPrecondition, InvalidSpec
from agent.migration.policy import MigrationOptions
from agent.migration.ports import TargetAgents
from agent.migration.records import SOURCE, MigrationBook
from agent.models import Phase
from agent.naming import domain_name, vm_key

__all__ = ["ask_target", "check_vm"]


def check_vm(
    service: VMService,
    book: MigrationBook,
    namespace: str,
    name: str,
    target_agent: str,
    options: MigrationOptions,
) -> None:
    """The request is sane and the VM can leave: it runs, has no pending spec change and is
    not migrating already (ALREADY_EXISTS naming that migration)."""
    if not target_agent:
        raise InvalidSpec("target_agent", "is required (host:port of the target's agent)")
    options.validate("options")
    domain = domain_name(namespace, name)
    active = book.active_for(domain, SOURCE)
    if active is not None:
        raise AlreadyExists(f"vm {vm_key(domain)} is already migrating: migration {active.id}")
    vm = service.get(namespace, name)  # NotFound
    if vm.status.phase != Phase.RUNNING:
        raise FailedPrecondition(
            f"vm {vm_key(domain)} is {vm.status.phase.value}; only a running VM migrates"
        )
    if vm.status.running_generation and vm.status.running_generation != vm.books.generation:
        raise FailedPrecondition(
            f"vm {vm_key(domain)} has a spec change waiting for a restart; restart it first"
        )


def ask_target(
    service: VMService,
    agents: TargetAgents,
    migration_id: str,
    vm: tuple[str, str],
    target_agent: str,
    options: MigrationOptions,
) -> str:
    """The target's checks (its node, the name, memory, hostDisks, post-copy), before
    anything is made; returns its node name. Unreachable → Unavailable; refused →
    FailedPrecondition with the target's words."""
    namespace, name = vm
    _, spec, books = service.steps.require(domain_name(namespace, name))
    target = agents.connect(target_agent)
    try:
        answer = target.prepare(
            migration_id, namespace, name, metadata_payload(spec, books), spec.memory_bytes,
            validate_only=True, post_copy=options.post_copy,
        )  # fmt: skip
    finally:
        target.close()
    if answer.node_name == service.node_name:
        raise FailedPrecondition(
            f"target_agent {target_agent} is node {answer.node_name}, the VM's own node: "
            "pick another node"
        )
    return answer.node_name
