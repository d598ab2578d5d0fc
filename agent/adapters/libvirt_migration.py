"""LibvirtMigration: live migration through libvirt (``migrateToURI3`` peer-to-peer), its job
statistics and its knobs, on the agent's one libvirt connection."""

from __future__ import annotations

from typing import Any

import libvirt

from agent.adapters.libvirt import LibvirtHypervisor
from agent.errors import FailedPrecondition, NotFound
from agent.ports import JobSample, MigrationJob

__all__ = ["LibvirtMigration", "migration_call"]

# Live, libvirtd to libvirtd, defined on the target and gone from the source on success.
_BASE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)
_UNLIMITED_MIB = (1 << 63) // (1 << 20) - 1  # libvirt's QEMU_DOMAIN_MIG_BANDWIDTH_MAX


class LibvirtMigration:
    """A Migrator port on libvirt-python.

    Usage::

        migration = LibvirtMigration(hv)
        live, persistent = migration.migratable_xml("default_web")
        migration.migrate("default_web", MigrationJob(...))     # blocks until it ends
        migration.job_stats("default_web")                      # from another thread
    """

    def __init__(self, hv: LibvirtHypervisor) -> None:
        self.hv = hv

    def migratable_xml(self, name: str) -> tuple[str, str]:
        def read(dom: Any) -> tuple[str, str]:
            live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
            persistent = dom.XMLDesc(
                libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE
            )
            return str(live), str(persistent)

        return self.hv.with_domain(name, "reading the migratable definition of", read)

    def migrate(self, name: str, job: MigrationJob) -> None:
        flags, params = migration_call(job)
        self.hv.with_domain(
            name, "migrating", lambda dom: dom.migrateToURI3(job.libvirt_uri, params, flags)
        )

    def job_stats(self, name: str) -> JobSample | None:
        def read(dom: Any) -> JobSample | None:
            try:
                stats = dom.jobStats(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return None  # "domain is not running": shut off at the end of its job
                raise  # transient (a state-change lock timeout, internal error): callers retry
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                return None
            state, reason = dom.state()
            post_copy = (state, reason) == (
                libvirt.VIR_DOMAIN_PAUSED,
                libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
            )
            return _sample(stats, post_copy=post_copy)

        try:
            return self.hv.with_domain(name, "reading the migration job of", read)
        except NotFound:
            return None  # undefined at the end of a migration (UNDEFINE_SOURCE)

    def completed(self, name: str) -> tuple[int, JobSample]:
        def read(dom: Any) -> tuple[int, JobSample]:
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            return int(stats.get("downtime", 0)), _sample(stats, post_copy=False)

        try:
            return self.hv.with_domain(name, "reading the completed job of", read)
        except (NotFound, FailedPrecondition):
            return 0, JobSample()

    def abort(self, name: str) -> None:
        def abort(dom: Any) -> None:
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise  # "no job is active": it ended meanwhile, nothing to abort

        self.hv.with_domain(name, "aborting the migration of", abort)

    def set_max_downtime(self, name: str, milliseconds: int) -> None:
        self.hv.with_domain(
            name, "setting the downtime of", lambda dom: dom.migrateSetMaxDowntime(milliseconds, 0)
        )

    def set_max_speed(self, name: str, mib_per_second: int) -> None:
        # 0 is "unlimited" to callers; to libvirt it is not, so send libvirt's largest value.
        speed = mib_per_second or _UNLIMITED_MIB
        self.hv.with_domain(
            name, "setting the bandwidth of", lambda dom: dom.migrateSetMaxSpeed(speed, 0)
        )

    def start_post_copy(self, name: str) -> None:
        self.hv.with_domain(name, "switching to post-copy", lambda dom: dom.migrateStartPostCopy(0))


def migration_call(job: MigrationJob) -> tuple[int, dict[str, Any]]:
    """The flags and typed parameters of ``migrateToURI3`` for ``job``."""
    flags = _BASE_FLAGS
    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_URI: job.migration_uri,
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: job.dest_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: job.persist_xml,
    }
    if job.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = job.bandwidth_mib
    if job.parallel_connections > 1:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = job.parallel_connections
    if job.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if job.post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if job.tls:
        flags |= libvirt.VIR_MIGRATE_TLS  # QEMU's TLS with libvirt's certificates (qemu.conf)
    if job.shared_disks:
        flags |= libvirt.VIR_MIGRATE_UNSAFE  # the caller vouches for its shared disks
    if job.copy_disks:
        # Incremental: the target has the same backing images; only the top layer moves.
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(job.copy_disks)
    return flags, params


def _sample(stats: dict[str, Any], *, post_copy: bool) -> JobSample:
    def value(key: str) -> int:
        return int(stats.get(key, 0))

    return JobSample(
        elapsed_ms=value("time_elapsed"),
        data_total=value("data_total"),
        data_processed=value("data_processed"),
        data_remaining=value("data_remaining"),
        memory_total=value("memory_total"),
        memory_processed=value("memory_processed"),
        memory_remaining=value("memory_remaining"),
        memory_iteration=value("memory_iteration"),
        dirty_rate=value("memory_dirty_rate"),
        memory_bps=value("memory_bps"),
        disk_total=value("disk_total"),
        disk_processed=value("disk_processed"),
        disk_remaining=value("disk_remaining"),
        page_size=value("memory_page_size") or 4096,
        post_copy=post_copy,
    )
