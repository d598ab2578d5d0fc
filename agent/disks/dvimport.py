"""DataVolume imports: fill each ``dataVolumeTemplates`` claim before its VM starts.

Runs the steps ``agent.disks.dvplan`` decides on, in the claim's own folder under the first
claim root: ``<root>/<namespace>/<name>/disk.img`` appears (linked, never replacing one)
once it is complete, pinned raw and marked with the importing VM, so a second Apply finds
it and imports nothing, and an import cut short (an agent killed, a full disk, a bad
checksum) leaves only temporary files, which are removed at once or, after a restart, by
``sweep`` and by the next import of that claim.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from agent.datavolume import DataVolumeTemplate, HttpImport, PvcClone, RegistryImport
from agent.disks.claimdisks import claim_uses, pin_format, pinned_format
from agent.disks.claims import CLAIM_IMAGE, claim_folder, find_claim
from agent.disks.configfiles import require_object
from agent.disks.containerdisk import ContainerDisks
from agent.disks.dvfetch import LimitedWriter, read_header, unpack
from agent.disks.dvfiles import (
    FILE_MODE,
    claim_folders,
    grow,
    leftovers,
    make_folders,
    owner_of,
    publish,
    remove_temporaries,
    sparse,
)
from agent.disks.dvplan import (
    COMPRESSED,
    DOWNLOAD,
    IMPORTING,
    UNPACKED,
    ImportState,
    Stage,
    Step,
    advance,
    begin,
    fail,
    next_step,
    sniff_format,
)
from agent.disks.imagecheck import usable_format
from agent.disks.ports import Downloader, ImageConverter, PullObserver, PullProgress
from agent.errors import AgentError, FailedPrecondition, InvalidSpec, ResourceExhausted
from agent.imageref import parse_reference
from agent.models import ConfigKind, VMSpec
from agent.ports import ImageTool

__all__ = ["DataVolumeImporter", "ImportServices", "download_limit"]

log = logging.getLogger(__name__)


def download_limit(size_bytes: int) -> int:
    """The most bytes a download (or its decompressed form) may have for a claim of
    ``size_bytes``: the size plus room for qcow2 metadata."""
    return size_bytes + max(size_bytes // 10, 64 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class ImportServices:
    """What imports use; an unset one refuses its source kind."""

    images: ImageTool
    converter: ImageConverter
    downloader: Downloader | None = None
    container_disks: ContainerDisks | None = None
    secrets_dir: str = ""
    observer: PullObserver | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    """One template being imported for one VM."""

    vm: VMSpec
    domain: str
    template: DataVolumeTemplate
    field: str
    folder: str

    def temp(self, name: str) -> str:
        return os.path.join(self.folder, name)


class DataVolumeImporter:
    """Imports the claims of ``dataVolumeTemplates``.

    Usage::

        importer = DataVolumeImporter(["/var/lib/claims"], ImportServices(QemuImg(), ...))
        importer.sweep()                          # at start: leftovers of interrupted imports
        importer.import_all(spec, "default_web")  # before the VM's disks are resolved
        importer.remove_claims(spec)              # when the VM is deleted
    """

    def __init__(self, roots: Sequence[str], services: ImportServices) -> None:
        self.roots = tuple(os.path.abspath(root) for root in roots)
        self.services = services
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, folder: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(folder, threading.Lock())

    def import_all(self, vm: VMSpec, domain: str, imported: list[str] | None = None) -> None:
        """Make every template's claim exist; a complete claim is left as it is. The names
        of the templates imported now are appended to ``imported`` (also when one fails)."""
        for index, template in enumerate(vm.data_volume_templates):
            field = f"spec.dataVolumeTemplates[{index}]"
            if not self.roots:
                raise InvalidSpec(field, "claims are not enabled on this node (no --claim-root)")
            folder = claim_folder(self.roots[0], vm.namespace, template.name, field)
            job = _Job(vm, domain, template, field, folder)
            with self._lock(folder):
                if self._import(job) and imported is not None:
                    imported.append(template.name)

    def _import(self, job: _Job) -> bool:
        """Whether the claim was imported now (not found complete)."""
        name = job.template.name
        found = find_claim(self.roots, job.vm.namespace, name, job.field)
        if found is None:
            make_folders(job.folder, job.field)
        found_temps = () if found is not None else leftovers(job.folder)
        state = begin(job.template, complete=found is not None, leftovers=found_temps)
        if found is not None:
            log.info("claim %s/%s is there already: nothing to import", job.vm.namespace, name)
        try:
            while (step := next_step(state)).stage != Stage.DONE:
                state = self._run(job, state, step)
        except Exception as exc:
            state = fail(state, str(exc))
            remove_temporaries(job.folder)
            if found is None:
                with contextlib.suppress(OSError):
                    os.rmdir(job.folder)  # made for this import and empty: not a claim
            raise _named(exc, job) from exc
        finally:
            self._finished(job, state)
        return state.published

    def _finished(self, job: _Job, state: ImportState) -> None:
        claim = f"{job.vm.namespace}/{job.template.name}"
        if state.error:
            log.warning("claim %s: %s import failed, nothing kept: %s", claim,
                        job.template.source_kind, state.error)  # fmt: skip
        elif state.published:
            log.info("claim %s: %s import complete", claim, job.template.source_kind)

    def _run(self, job: _Job, state: ImportState, step: Step) -> ImportState:
        stage = step.stage
        if stage == Stage.CLEAN:
            log.warning("claim %s: removing an interrupted import %s", job.folder, step.leftovers)
            remove_temporaries(job.folder)
        elif stage == Stage.CREATE_BLANK:
            sparse(job.temp(IMPORTING), job.template.size_bytes)
        elif stage == Stage.FETCH:
            path, fmt = self._fetch(job)
            return advance(state, step, path=path, fmt=fmt)
        elif stage == Stage.UNPACK:
            return advance(state, step, path=job.temp(UNPACKED), fmt=self._unpack(job, step))
        elif stage == Stage.CONVERT:
            self._convert(job, step.path, step.format)
        elif stage == Stage.GROW:
            grow(job.temp(IMPORTING), job.template.size_bytes)
        elif stage == Stage.PUBLISH:
            publish(job.temp(IMPORTING), os.path.join(job.folder, CLAIM_IMAGE), _owner(job.vm))
        else:
            raise FailedPrecondition(f"import stopped at {stage}")  # FAILED: never planned
        return advance(state, step)

    def _fetch(self, job: _Job) -> tuple[str, str]:
        """The file holding the template's data and its format."""
        source = job.template.source
        if isinstance(source, HttpImport):
            return self._download(job, source)
        if isinstance(source, RegistryImport):
            return self._pull(job, source)
        if isinstance(source, PvcClone):
            found = find_claim(self.roots, source.namespace, source.name, job.field)
            if found is None:
                raise FailedPrecondition(
                    f"the claim to clone, {source.namespace}/{source.name}, is not on this node"
                )
            return found.path, self._clone_format(job, found.folder, found.path, found.block)
        raise FailedPrecondition(f"{job.template.source_kind} has nothing to fetch")

    def _clone_format(self, job: _Job, folder: str, path: str, block: bool) -> str:
        """The clone source's format as pinned (a guest may have written any first bytes
        into it, so they are never guessed from); an unpinned file is probed and pinned."""
        if block:
            return "raw"
        field = f"{job.field}.spec.source.pvc"
        what = f"the claim to clone ({path})"
        fmt = pinned_format(folder, what, field)
        if not fmt:
            fmt = pin_format(folder, usable_format(self.services.images.inspect(path), what, field))
        return fmt

    @staticmethod
    def _unpack(job: _Job, step: Step) -> str:
        """Decompress our own download into UNPACKED; its format (never compressed again)."""
        if os.path.dirname(step.path) != job.folder:
            raise FailedPrecondition(f"{step.path} is not this import's to decompress")
        target = job.temp(UNPACKED)
        unpack(step.path, step.format, target, download_limit(job.template.size_bytes))
        os.unlink(step.path)
        fmt = sniff_format(read_header(target))
        if fmt in COMPRESSED:
            raise FailedPrecondition(
                f"the {step.format} download holds {fmt} data again; nested compression is "
                "not supported: compress the image once"
            )
        return fmt

    def _download(self, job: _Job, source: HttpImport) -> tuple[str, str]:
        downloader = self.services.downloader
        if downloader is None:
            raise InvalidSpec(job.field, "http imports are not enabled on this node")
        auth = None
        if source.secret_ref:
            auth = self._credentials(job, source.secret_ref)
        target = job.temp(DOWNLOAD)
        limit = download_limit(job.template.size_bytes)
        with self._progress(job, source.url) as progress, open(target, "xb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            writer = LimitedWriter(handle, limit, source.checksum)
            downloader.download(source.url, writer.write, auth=auth, progress=progress)
            writer.check()
            handle.flush()
            os.fsync(handle.fileno())
        return target, sniff_format(read_header(target))

    def _credentials(self, job: _Job, secret: str) -> tuple[str, str]:
        """``accessKeyId`` and ``secretKey`` of a node secret (docs/config-volumes.md)."""
        field = f"{job.field}.spec.source.http.secretRef.name"
        dir_, namespace = self.services.secrets_dir, job.vm.namespace
        keys = require_object(dir_, namespace, ConfigKind.SECRET, secret, field)
        missing = [k for k in ("accessKeyId", "secretKey") if k not in keys]
        if missing:
            raise InvalidSpec(field, f"secret {namespace}/{secret} has no {missing[0]} key")
        return keys["accessKeyId"].decode().strip(), keys["secretKey"].decode().strip()

    def _pull(self, job: _Job, source: RegistryImport) -> tuple[str, str]:
        disks = self.services.container_disks
        if disks is None:
            raise InvalidSpec(job.field, "registry imports are not enabled on this node")
        image = parse_reference(source.url.removeprefix("docker://"))
        with self._progress(job, source.url) as progress:
            entry = disks.ensure(image, "", job.domain, progress=progress)
        return entry.path, entry.format

    def _progress(self, job: _Job, what: str) -> _Progress:
        return _Progress(self.services.observer, job, what)

    def _convert(self, job: _Job, path: str, fmt: str) -> None:
        """Copy (or, for our own raw download, move) the data into the raw claim image."""
        services = self.services
        if fmt == "qcow2":
            usable_format(services.images.inspect(path), path, f"{job.field}.spec.source")
        size = services.converter.virtual_size(path, fmt)
        if size > job.template.size_bytes:
            raise FailedPrecondition(
                f"the image's virtual size ({size} bytes) is larger than the DataVolume's "
                f"storage ({job.template.size_bytes} bytes)"
            )
        target = job.temp(IMPORTING)
        if fmt == "raw" and os.path.dirname(path) == job.folder:
            os.replace(path, target)
            return
        services.converter.convert_to_raw(path, fmt, target)
        os.chmod(target, FILE_MODE)
        if os.path.dirname(path) == job.folder:
            os.unlink(path)

    def remove_claims(
        self, vm: VMSpec, others: Iterable[VMSpec] = (), only: Collection[str] | None = None
    ) -> list[str]:
        """Remove the claims of templates marked delete-with-vm (the VM is gone) that this
        VM's own import made (their owner mark names it) and no other VM of ``others``
        (the node's other defined VMs) names; the rest stay. ``only``: just these templates.
        Returns the folders removed."""
        removed = []
        named = _claims_named(others, vm)
        for index, template in enumerate(vm.data_volume_templates):
            if not template.delete_with_vm or not self.roots:
                continue
            if only is not None and template.name not in only:
                continue
            field = f"spec.dataVolumeTemplates[{index}]"
            claim = f"{vm.namespace}/{template.name}"
            try:
                with self._lock(claim_folder(self.roots[0], vm.namespace, template.name, field)):
                    found = find_claim(self.roots, vm.namespace, template.name, field)
                    if found is None or found.block:
                        continue
                    if owner_of(found.folder) != _owner(vm) or claim in named:
                        log.info("vm %s: keeping claim %s (not its import, or in use by "
                                 "another VM)", vm.key, claim)  # fmt: skip
                        continue
                    shutil.rmtree(found.folder, ignore_errors=True)
                    removed.append(found.folder)
            except InvalidSpec:
                log.exception("not removing claim %s", claim)
        return removed

    def sweep(self) -> list[str]:
        """Remove the temporary files of imports an agent restart cut short."""
        removed = []
        for root in self.roots:
            for folder in claim_folders(root):
                removed.extend(remove_temporaries(folder))
        for path in removed:
            log.warning("removed %s: an import interrupted by an agent restart", path)
        return removed


class _Progress:
    """Reports a download or pull as pull progress in the VM's status while it runs."""

    def __init__(self, observer: PullObserver | None, job: _Job, what: str) -> None:
        self.observer = observer
        self.job = job
        self.what = what
        self.reported = False

    def __call__(self, done: int, total: int) -> None:
        if self.observer is None:
            return
        self.reported = True
        progress = PullProgress(self.job.template.name, self.what, done, total or done)
        self.observer.pulling(self.job.domain, self.job.vm, progress)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if self.observer is not None and self.reported:
            failure = error if isinstance(error, Exception) else None
            self.observer.finished(self.job.domain, _named(failure, self.job) if failure else None)


def _owner(vm: VMSpec) -> str:
    """What the owner mark of a claim this VM imported says: its uid (its key without)."""
    return vm.uid or f"key:{vm.key}"


def _claims_named(vms: Iterable[VMSpec], but: VMSpec) -> set[str]:
    """``namespace/claim`` of every claim the VMs (other than ``but``) use or template."""
    keys: set[str] = set()
    for other in vms:
        if other.key == but.key:
            continue
        keys.update(use.key for use in claim_uses(other))
        keys.update(f"{other.namespace}/{t.name}" for t in other.data_volume_templates)
    return keys


def _named(exc: Exception, job: _Job) -> Exception:
    """The error of an import, naming the template; a full disk is ResourceExhausted."""
    what = f"{job.field} (DataVolume {job.template.name})"
    if isinstance(exc, InvalidSpec):
        return exc if exc.field.startswith(job.field) else InvalidSpec(what, exc.problem)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(
            f"{what}: no space left for the claim under {os.path.dirname(job.folder)}; "
            "the partial import was removed"
        )
    if isinstance(exc, FailedPrecondition) and "No space left on device" in str(exc):
        return ResourceExhausted(f"{what}: no space left for the claim: {exc}")
    if isinstance(exc, AgentError):
        return type(exc)(f"{what}: {exc}")
    return FailedPrecondition(f"{what}: import failed: {exc}")
