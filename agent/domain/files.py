"""Per-VM files on the node: kernel paths, disks for every volume kind, the console log.

Everything a VM owns lives in ``<state-dir>/vms/<domain>/`` and goes with the VM: overlays
(image files, container disks), empty disks, NoCloud seed ISOs, the console log. Host disks
and cached container disks live outside it: host disks stay, cache entries are released and
garbage-collected when their last VM goes. Client paths are resolved under allow-listed
roots (see ``agent.paths``); every refusal names the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.disks.claimdisks import ClaimUse, claim_backing, claim_uses, placeholder_backing
from agent.disks.claims import find_claim
from agent.disks.cloudinit import (
    CONFIG_DRIVE_VOLUME_ID,
    VOLUME_ID,
    NoCloudSeed,
    config_drive_seed,
    nocloud_seed,
)
from agent.disks.configfiles import read_object, require_object
from agent.disks.containerdisk import ContainerDisks
from agent.disks.diskfull import disk_full
from agent.disks.dvimport import DataVolumeImporter
from agent.disks.hostdisk import host_disk_path
from agent.disks.imagecheck import usable_format
from agent.disks.ports import IsoWriter, PullObserver, PullProgress
from agent.errors import FailedPrecondition, InvalidSpec, ResourceExhausted, Unavailable
from agent.models import (
    CloudInitConfigDrive,
    CloudInitNoCloud,
    ConfigVolume,
    ContainerDisk,
    DiskBacking,
    EmptyDisk,
    HostDisk,
    ImageFile,
    VMSpec,
    Volume,
)
from agent.naming import vm_key
from agent.paths import resolve_under_roots
from agent.ports import ImageTool

__all__ = ["PreparedFiles", "VMFiles", "VolumeSupport", "vm_folder", "vm_folder_exists"]

log = logging.getLogger(__name__)

_INSTANCE = "spec.template.spec"
# A VM's files hold guest data and secrets: owner-only (libvirt gives each to QEMU's user
# while the VM runs, "dynamic ownership"); the folders can be traversed, not listed.
_FILE_MODE = 0o600
_FOLDER_MODE = 0o711


@dataclass(frozen=True, slots=True)
class PreparedFiles:
    """Host paths a domain definition needs."""

    kernel: str
    initrd: str
    console_log: str
    disks: tuple[DiskBacking, ...]
    ignition: str = ""  # the ignition config file handed over fw_cfg
    # Claims not on the node yet: their disks name where they will be; the VM waits.
    missing_claims: tuple[ClaimUse, ...] = ()


@dataclass(frozen=True, slots=True)
class VolumeSupport:
    """What this node offers besides image files and empty disks; unset means "not here"."""

    container_disks: ContainerDisks | None = None
    iso: IsoWriter | None = None
    host_disk_roots: tuple[str, ...] = ()
    claim_roots: tuple[str, ...] = ()  # persistentVolumeClaim and dataVolume (claims.py)
    secrets_dir: str = ""
    pulls: PullObserver | None = None  # told about pulls, to show progress in status
    data_volumes: DataVolumeImporter | None = None  # fills dataVolumeTemplates claims


def vm_folder(state_dir: str, domain: str) -> str:
    """Where a VM's files live: ``<state-dir>/vms/<domain>``."""
    return os.path.join(os.path.abspath(state_dir), "vms", domain)


def vm_folder_exists(state_dir: str, domain: str) -> bool:
    """Whether the VM still has its folder (how the image cache tells stale users)."""
    return bool(domain) and os.path.isdir(vm_folder(state_dir, domain))


class VMFiles:
    """Resolves and creates the files of VMs.

    Usage::

        files = VMFiles("/var/lib/virt-agent", ["/var/lib/virt-agent/images"], QemuImg(),
                        VolumeSupport(container_disks=..., iso=PycdlibIso()))
        prepared = files.prepare(spec, "default_web")   # idempotent
        files.remove("default_web")
    """

    def __init__(
        self,
        state_dir: str,
        image_roots: list[str],
        images: ImageTool,
        support: VolumeSupport | None = None,
    ) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.image_roots = [os.path.abspath(root) for root in image_roots]
        self.images = images
        self.support = support or VolumeSupport()

    def vm_dir(self, domain: str) -> str:
        return vm_folder(self.state_dir, domain)

    def vm_exists(self, domain: str) -> bool:
        return vm_folder_exists(self.state_dir, domain)

    def remove_orphans(self, keep: set[str]) -> list[str]:
        """Remove the folders of VMs not in ``keep`` (domains, and VMs being made): they have
        no domain (an agent killed mid-delete), so nothing of theirs may ever be handed to a
        new VM of the same name. Returns their names."""
        try:
            names = sorted(os.listdir(os.path.join(self.state_dir, "vms")))
        except FileNotFoundError:
            return []
        orphans = [n for n in names if n not in keep and os.path.isdir(self.vm_dir(n))]
        for name in orphans:
            log.warning(
                "repaired: files of %s removed: it has no domain (a delete interrupted "
                "between undefine and file removal, or a create before define)",
                name,
            )
            self.remove(name)
        return orphans

    def console_log(self, domain: str) -> str:
        return os.path.join(self.vm_dir(domain), "console.log")

    def prepare(
        self, vm: VMSpec, domain: str, *, pins: Mapping[str, str] | None = None
    ) -> PreparedFiles:
        """Resolve every path and create missing files; safe to call again. ``pins`` maps a
        containerDisk volume to the manifest digest it must use (pulled and verified by it)."""
        kernel = initrd = ""
        boot = vm.firmware.kernel_boot
        field = f"{_INSTANCE}.domain.firmware.kernelBoot.container"
        if boot is not None:
            kernel = resolve_under_roots(self.image_roots, boot.kernel_path, f"{field}.kernelPath")
            if boot.initrd_path:
                initrd = resolve_under_roots(
                    self.image_roots, boot.initrd_path, f"{field}.initrdPath"
                )
        created_dir = not os.path.isdir(self.vm_dir(domain))
        claims = {use.volume: use for use in claim_uses(vm)}
        missing: list[ClaimUse] = []
        imported: list[str] = []  # claims of dataVolumeTemplates this call imported
        try:
            os.makedirs(self.vm_dir(domain), mode=_FOLDER_MODE, exist_ok=True)
            for folder in (os.path.dirname(self.vm_dir(domain)), self.vm_dir(domain)):
                os.chmod(folder, _FOLDER_MODE)  # (the umask may have taken the x bits)
            if vm.data_volume_templates:
                self._import_data_volumes(vm, domain, imported)
            disks = tuple(
                self._claim(claims[v.name], missing)
                if v.name in claims
                else self._disk(vm, domain, index, pins or {})
                for index, v in enumerate(vm.volumes)
            )
            ignition = ""
            if vm.ignition_data:
                ignition = os.path.join(self.vm_dir(domain), "ignition.json")
                _write_if_changed(ignition, vm.ignition_data.encode())
        except Exception as exc:
            if created_dir:  # a new VM: what its import made for it goes too
                self.remove(domain)
                if imported and self.support.data_volumes is not None:
                    self.support.data_volumes.remove_claims(vm, only=imported)
            if disk_full(exc):
                raise ResourceExhausted(
                    f"vm {vm_key(domain)}: no space left in the state directory "
                    f"{self.state_dir} for its files (free space there); nothing was created"
                ) from exc
            raise
        console = self.console_log(domain)
        return PreparedFiles(kernel, initrd, console, disks, ignition, tuple(missing))

    def missing_claims(self, vm: VMSpec) -> tuple[ClaimUse, ...]:
        """The VM's claims that are not on the node (yet); nothing is created or read (the
        start that follows checks the images)."""
        roots = self.support.claim_roots
        return tuple(
            u for u in claim_uses(vm) if find_claim(roots, u.namespace, u.claim, u.field) is None
        )

    def _claim(self, use: ClaimUse, missing: list[ClaimUse]) -> DiskBacking:
        """The claim's file or device, used in place (never removed with the VM)."""
        roots = self.support.claim_roots
        backing = claim_backing(roots, self.images, use)
        if backing is None:
            missing.append(use)
            return placeholder_backing(roots, use)
        return backing

    def _import_data_volumes(self, vm: VMSpec, domain: str, imported: list[str]) -> None:
        """Fill the claims of ``dataVolumeTemplates`` (kept, unless marked, when the VM goes)."""
        if self.support.data_volumes is None:
            raise InvalidSpec("spec.dataVolumeTemplates", "claims are not enabled on this node")
        self.support.data_volumes.import_all(vm, domain, imported)

    def _disk(self, vm: VMSpec, domain: str, index: int, pins: Mapping[str, str]) -> DiskBacking:
        volume = vm.volumes[index]
        field = f"{_INSTANCE}.volumes[{index}]"
        source = volume.source
        if isinstance(source, ImageFile):
            base = resolve_under_roots(self.image_roots, source.path, f"{field}.imageFile.path")
            base_format = usable_format(self.images.inspect(base), base, f"{field}.imageFile.path")
            return self._overlay(domain, volume.name, base, base_format)
        if isinstance(source, EmptyDisk):
            path = os.path.join(self.vm_dir(domain), f"{volume.name}-empty.qcow2")
            if not os.path.exists(path):
                self.images.create_blank(path, source.capacity_bytes)
                os.chmod(path, _FILE_MODE)
            return DiskBacking(name=volume.name, path=path, format="qcow2")
        if isinstance(source, ContainerDisk):
            if volume.name in pins:  # the same image as the migration's source, by digest
                image = dataclasses.replace(source.image, digest=pins[volume.name])
                source = dataclasses.replace(source, image=image)
            return self._container_disk(vm, domain, volume, source, f"{field}.containerDisk")
        if isinstance(source, CloudInitNoCloud):
            return self._seed(vm, domain, volume.name, source, f"{field}.cloudInitNoCloud")
        if isinstance(source, CloudInitConfigDrive):
            return self._seed(vm, domain, volume.name, source, f"{field}.cloudInitConfigDrive")
        if isinstance(source, ConfigVolume):
            return self._config_volume(vm, domain, volume.name, source, f"{field}.{source.kind}")
        if isinstance(source, HostDisk):
            roots = self.support.host_disk_roots
            path = host_disk_path(roots, source, f"{field}.hostDisk.path")
            return DiskBacking(name=volume.name, path=path, format="raw")
        kind = type(source).__name__
        raise InvalidSpec(field, f"{kind} volumes are not supported by this agent yet")

    def _overlay(self, domain: str, volume: str, base: str, base_format: str) -> DiskBacking:
        # Named by base path so a changed image never swaps the disk under a running guest.
        digest = hashlib.sha256(base.encode()).hexdigest()[:12]
        overlay = os.path.join(self.vm_dir(domain), f"{volume}-{digest}.qcow2")
        if not os.path.exists(overlay):
            self.images.create_overlay(base, base_format, overlay)
            os.chmod(overlay, _FILE_MODE)
        return DiskBacking(name=volume, path=overlay, format="qcow2")

    def _container_disk(
        self, vm: VMSpec, domain: str, volume: Volume, source: ContainerDisk, field: str
    ) -> DiskBacking:
        disks = self.support.container_disks
        if disks is None:
            raise InvalidSpec(field, "containerDisk volumes are not enabled on this node")
        image = source.image
        observer = self.support.pulls
        pulled = False

        def progress(done: int, total: int) -> None:
            nonlocal pulled
            pulled = True
            if observer is not None:
                observer.pulling(domain, vm, PullProgress(volume.name, str(image), done, total))

        try:
            entry = disks.ensure(
                image, source.image_pull_policy, domain, path=source.path, progress=progress
            )
        except (FailedPrecondition, Unavailable) as exc:
            error = type(exc)(f"{field}.image: {image.written or image}: {exc}")
            if pulled and observer is not None:
                observer.finished(domain, error)
            raise error from exc
        except Exception as exc:
            if pulled and observer is not None:
                observer.finished(domain, exc)
            raise
        if pulled and observer is not None:
            observer.finished(domain, None)
        return self._overlay(domain, volume.name, entry.path, entry.format)

    def _seed(
        self,
        vm: VMSpec,
        domain: str,
        volume: str,
        source: CloudInitNoCloud | CloudInitConfigDrive,
        field: str,
    ) -> DiskBacking:
        kind = field.rsplit(".", 1)[-1]
        if self.support.iso is None:
            raise InvalidSpec(field, f"{kind} volumes are not enabled on this node")
        secrets = self.support.secrets_dir
        if isinstance(source, CloudInitNoCloud):
            seed = nocloud_seed(vm, source, secrets_dir=secrets, field=field)
            label = VOLUME_ID
        else:
            seed = config_drive_seed(vm, source, secrets_dir=secrets, field=field)
            label = CONFIG_DRIVE_VOLUME_ID
        return self._iso(domain, volume, label, seed.files, seed.digest, readonly=False)

    def _config_volume(
        self, vm: VMSpec, domain: str, volume: str, source: ConfigVolume, field: str
    ) -> DiskBacking:
        """A secret, config map or service account as a read-only ISO, a file per key."""
        if self.support.iso is None:
            raise InvalidSpec(field, f"{source.kind} volumes are not enabled on this node")
        secrets = self.support.secrets_dir
        if source.optional:
            keys = read_object(secrets, vm.namespace, source.kind, source.name, field) or {}
        else:
            keys = require_object(secrets, vm.namespace, source.kind, source.name, field)
        digest = NoCloudSeed(keys).digest
        return self._iso(domain, volume, source.volume_label, keys, digest, readonly=True)

    def _iso(
        self,
        domain: str,
        volume: str,
        label: str,
        files: dict[str, bytes],
        digest: str,
        *,
        readonly: bool,
    ) -> DiskBacking:
        assert self.support.iso is not None
        # Named by content: a changed seed is a new file, never rewritten under a guest.
        path = os.path.join(self.vm_dir(domain), f"{volume}-{label or 'iso'}-{digest[:12]}.iso")
        if not os.path.exists(path):
            self.support.iso.write_iso(path, label, files)
            os.chmod(path, _FILE_MODE)  # secret contents: QEMU's user and root only
        return DiskBacking(name=volume, path=path, format="raw", readonly=readonly)

    def container_digests(self, vm: VMSpec, domain: str) -> dict[str, str]:
        """containerDisk volume → the manifest digest ``domain`` runs it from (volumes whose
        cache entry cannot be told are left out)."""
        disks = self.support.container_disks
        if disks is None:
            return {}
        found = {}
        for volume in vm.volumes:
            source = volume.source
            if isinstance(source, ContainerDisk):
                digest = disks.digest_in_use(source.image, source.path, domain)
                if digest:
                    found[volume.name] = digest
        return found

    def remove(
        self, domain: str, spec: VMSpec | None = None, others: Iterable[VMSpec] = ()
    ) -> None:
        """Delete everything the agent made for the VM; a missing folder is fine. With the
        VM's ``spec`` (it is deleted), the delete-with-vm claims its import made go too,
        unless one of ``others`` (the node's other defined VMs) names them."""
        shutil.rmtree(self.vm_dir(domain), ignore_errors=True)
        if spec is not None and self.support.data_volumes is not None:
            self.support.data_volumes.remove_claims(spec, others)
        if self.support.pulls is not None:
            self.support.pulls.forget(domain)
        disks = self.support.container_disks
        if disks is None:
            return
        try:
            disks.release(domain)
            disks.gc()
        except OSError:
            # Never fails a delete: the next GC (on the next delete or at start) retries.
            log.exception("releasing cached container disks of %s", domain)


def _write_if_changed(path: str, data: bytes) -> None:
    """Write ``data`` atomically unless the file holds it already (a running guest's QEMU
    read it at start; a changed file takes effect at the next boot, like any spec change)."""
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return
    except FileNotFoundError:
        pass
    partial = f"{path}.partial"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)
