"""Migration details without libvirt: the target's containerDisk pinned to the source's
digest, the completion timeout over memory and disk, libvirt's flags (TLS), the post-copy
probe."""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest

from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.libvirt_migration import LibvirtMigration, migration_call
from agent.adapters.postcopy import PostCopyProbe
from agent.errors import FailedPrecondition
from agent.migration.admission import check_post_copy
from agent.migration.policy import GIB, Abort, MigrationOptions, Policy
from agent.ports import JobSample, MigrationJob
from tests.unit.disk_fakes import FakeRegistry, layer
from tests.unit.test_disk_pulls import files_with, spec

IMAGE = "reg.test:5000/disks/guest:v1"


def test_the_target_pulls_the_containerdisk_the_source_runs_by_digest_not_tag(
    tmp_path: Path,
) -> None:
    reg = FakeRegistry()
    first = reg.add_image([layer({"disk/disk.qcow2": b"QFI\xfb" + b"1" * 3000})], tag="v1")
    source, _, _, _ = files_with(tmp_path / "a", reg)
    source.prepare(spec(IMAGE), "default_a")
    pins = source.container_digests(spec(IMAGE), "default_a")
    assert pins == {"root": first}
    # the tag moves on before the VM migrates
    moved = reg.add_image([layer({"disk/disk.qcow2": b"QFI\xfb" + b"2" * 3000})], tag="v1")
    target, _, disks, images = files_with(tmp_path / "b", reg)
    before = len(reg.calls)
    target.prepare(spec(IMAGE), "default_a", pins=pins)
    [(base, _, _)] = images.overlays
    assert Path(base).read_bytes().endswith(b"1" * 100)  # the source's image, not v1 now
    assert disks.cache.entries() == [first] != [moved]
    asked = [c for c in reg.calls[before:] if c[0] == "manifest"]
    assert asked == [("manifest", first)]
    # a registry answering other bytes for that digest is refused (verified by digest)
    other, _, _, _ = files_with(tmp_path / "c", reg)
    reg.manifests[first] = reg.manifests[moved]
    with pytest.raises(FailedPrecondition, match=r"containerDisk\.image.*digest"):
        other.prepare(spec(IMAGE), "default_a", pins=pins)


def test_the_completion_timeout_counts_memory_and_the_disks_libvirt_copies() -> None:
    now = [0.0]
    options = MigrationOptions(completion_timeout_per_gib_s=10, progress_timeout_s=10_000)
    policy = Policy(options, 1 * GIB, lambda: now[0])
    assert policy.completion_timeout_s == 10
    # the job reports 3 GiB of storage copy besides the 1 GiB of memory: 4 GiB → 40 s
    sample = JobSample(data_total=4 * GIB, data_remaining=4 * GIB, memory_total=GIB,
                       disk_total=3 * GIB)  # fmt: skip
    policy.observe(sample)
    assert policy.completion_timeout_s == 40
    now[0] = 39.0
    assert not any(isinstance(d, Abort) for d in policy.observe(sample))
    now[0] = 40.0
    [abort] = [d for d in policy.observe(sample) if isinstance(d, Abort)]
    assert "completion timeout" in abort.reason


def job(**changes: object) -> MigrationJob:
    return MigrationJob("qemu+tls://192.0.2.12/system", "tcp://192.0.2.12", "<d/>", "<d/>",
                        **changes)  # type: ignore[arg-type]  # fmt: skip


def test_libvirt_is_asked_for_tls_only_when_the_job_says_so() -> None:
    flags, params = migration_call(job(tls=True, copy_disks=("vda",)))
    assert flags & libvirt.VIR_MIGRATE_TLS
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_INC
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda"]
    plain, _ = migration_call(job())
    assert not plain & libvirt.VIR_MIGRATE_TLS
    assert plain & libvirt.VIR_MIGRATE_PEER2PEER and plain & libvirt.VIR_MIGRATE_LIVE


def test_the_post_copy_probe_follows_the_kernels_userfaultfd_rules(tmp_path: Path) -> None:
    sysctl, device = tmp_path / "unprivileged_userfaultfd", tmp_path / "userfaultfd"
    device.write_text("")
    os.chmod(device, 0o600)  # root's only, as the kernel makes it

    def probe(user: str, setting: str | None, qemu: str = "7.2.0") -> str:
        if setting is None:
            sysctl.unlink(missing_ok=True)
        else:
            sysctl.write_text(setting + "\n")
        return PostCopyProbe(user, lambda: qemu, sysctl=str(sysctl), device=str(device))()

    assert probe("libvirt-qemu", None) == "the kernel has no userfaultfd"
    assert probe("libvirt-qemu", "1") == ""
    assert probe("root", "0") == ""
    refused = probe("nobody", "0", qemu="7.2.0")
    assert "QEMU runs as nobody, vm.unprivileged_userfaultfd is 0" in refused
    assert "Postcopy is not supported" in refused
    assert probe("nobody", "0", qemu="8.2.0") != ""  # the device is root's only
    os.chmod(device, 0o666)
    assert probe("nobody", "0", qemu="8.2.0") == ""
    assert probe("nobody", "0", qemu="7.2.0") != ""  # QEMU 7.2 never opens the device


def test_post_copy_is_refused_up_front_naming_the_field() -> None:
    check_post_copy("node-b", lambda: "", wanted=True)
    check_post_copy("node-b", lambda: "no userfaultfd", wanted=False)
    with pytest.raises(FailedPrecondition, match=r"options.post_copy: node node-b cannot run"):
        check_post_copy("node-b", lambda: "no userfaultfd", wanted=True)


class _StubDomain:
    """A libvirt domain whose jobStats raises libvirt's error ``code`` (a fault injected)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def jobStats(self, flags: int) -> dict[str, int]:  # noqa: N802 (libvirt's name)
        error = libvirt.libvirtError("injected")
        error.err = (self.code, 0, "injected error", 2, "", "", "", 0, 0)
        raise error


class _StubConnection:
    def __init__(self, code: int) -> None:
        self.code = code

    def lookupByName(self, name: str) -> _StubDomain:  # noqa: N802 (libvirt's name)
        return _StubDomain(self.code)


@pytest.mark.parametrize(
    ("code", "ended"),
    [
        (libvirt.VIR_ERR_OPERATION_INVALID, True),  # "domain is not running": the job ended
        (libvirt.VIR_ERR_OPERATION_TIMEOUT, False),  # state change lock: libvirt migrates on
        (libvirt.VIR_ERR_INTERNAL_ERROR, False),
    ],
)
def test_only_a_domain_not_running_means_the_migration_job_ended(code: int, ended: bool) -> None:
    hv = LibvirtHypervisor("test:///default")
    hv._conn = _StubConnection(code)
    migration = LibvirtMigration(hv)
    if ended:
        assert migration.job_stats("default_web") is None
    else:
        with pytest.raises(FailedPrecondition, match="injected error"):
            migration.job_stats("default_web")
