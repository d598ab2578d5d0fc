"""DataVolume imports: fill each ``dataVolumeTemplates`` claim before its VM starts.

Runs the steps ``agent.disks.dvplan`` decides on, in the claim's own folder under the first
claim root: ``<root>/<namespace>/<name>/disk.img`` appears (by rename) only once it is
complete, so a second Apply finds it and imports nothing, and an import cut short (an
agent killed, a full disk, a bad checksum) leaves only temporary files, which are removed
at once or, after a restart, by ``sweep`` and by the next import of that claim.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from agent.datavolume import DataVolumeTemplate, HttpImport, PvcClone, RegistryImport
from agent.disks.claims import CLAIM_IMAGE, claim_folder, find_claim
from agent.disks.configfiles import require_object
from agent.disks.containerdisk import ContainerDisks
from agent.disks.dvfetch import LimitedWriter, read_header, unpack
from agent.disks.dvplan import (
    DOWNLOAD,
    IMPORTING,
    TEMP_PREFIX,
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

_FOLDER_MODE = 0o711
_FILE_MODE = 0o600


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

    def import_all(self, vm: VMSpec, domain: str) -> None:
        """Make every template's claim exist; a complete claim is left as it is."""
        for index, template in enumerate(vm.data_volume_templates):
            field = f"spec.dataVolumeTemplates[{index}]"
            if not self.roots:
                raise InvalidSpec(field, "claims are not enabled on this node (no --claim-root)")
            folder = claim_folder(self.roots[0], vm.namespace, template.name, field)
            job = _Job(vm, domain, template, field, folder)
            with self._lock(folder):
                self._import(job)

    def _import(self, job: _Job) -> None:
        name = job.template.name
        found = find_claim(self.roots, job.vm.namespace, name, job.field)
        if found is None:
            _make_folders(job.folder, job.field)
        leftovers = () if found is not None else _leftovers(job.folder)
        state = begin(job.template, complete=found is not None, leftovers=leftovers)
        if found is not None:
            log.info("claim %s/%s is there already: nothing to import", job.vm.namespace, name)
        try:
            while (step := next_step(state)).stage != Stage.DONE:
                state = self._run(job, state, step)
        except Exception as exc:
            state = fail(state, str(exc))
            _remove_temporaries(job.folder)
            if found is None:
                with contextlib.suppress(OSError):
                    os.rmdir(job.folder)  # made for this import and empty: not a claim
            raise _named(exc, job) from exc
        finally:
            self._finished(job, state)

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
            _remove_temporaries(job.folder)
        elif stage == Stage.CREATE_BLANK:
            _sparse(job.temp(IMPORTING), job.template.size_bytes)
        elif stage == Stage.FETCH:
            path, fmt = self._fetch(job)
            return advance(state, step, path=path, fmt=fmt)
        elif stage == Stage.UNPACK:
            target = job.temp(UNPACKED)
            unpack(step.path, step.format, target, download_limit(job.template.size_bytes))
            os.unlink(step.path)
            return advance(state, step, path=target, fmt=sniff_format(read_header(target)))
        elif stage == Stage.CONVERT:
            self._convert(job, step.path, step.format)
        elif stage == Stage.GROW:
            _grow(job.temp(IMPORTING), job.template.size_bytes)
        elif stage == Stage.PUBLISH:
            _publish(job.temp(IMPORTING), os.path.join(job.folder, CLAIM_IMAGE))
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
            fmt = "raw" if found.block else sniff_format(read_header(found.path))
            return found.path, fmt
        raise FailedPrecondition(f"{job.template.source_kind} has nothing to fetch")

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
            os.fchmod(handle.fileno(), _FILE_MODE)
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
        os.chmod(target, _FILE_MODE)
        if os.path.dirname(path) == job.folder:
            os.unlink(path)

    def remove_claims(self, vm: VMSpec) -> list[str]:
        """Remove the claims of templates marked delete-with-vm (the VM is gone); the rest
        stay. Returns the folders removed."""
        removed = []
        for index, template in enumerate(vm.data_volume_templates):
            if not template.delete_with_vm or not self.roots:
                continue
            field = f"spec.dataVolumeTemplates[{index}]"
            try:
                found = find_claim(self.roots, vm.namespace, template.name, field)
            except InvalidSpec:
                log.exception("not removing claim %s/%s", vm.namespace, template.name)
                continue
            if found is not None and not found.block:
                shutil.rmtree(found.folder, ignore_errors=True)
                removed.append(found.folder)
        return removed

    def sweep(self) -> list[str]:
        """Remove the temporary files of imports an agent restart cut short."""
        removed = []
        for root in self.roots:
            for folder in _claim_folders(root):
                removed.extend(_remove_temporaries(folder))
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


def _make_folders(folder: str, field: str) -> None:
    """Create ``<root>/<namespace>/<name>``; a symlink on the way is refused."""
    namespace_dir = os.path.dirname(folder)
    for path in (os.path.dirname(namespace_dir), namespace_dir, folder):
        try:
            os.mkdir(path, _FOLDER_MODE)
        except FileExistsError:
            pass
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise InvalidSpec(field, f"{path} is not a folder (a symlink is not allowed)")


def _leftovers(folder: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)))
    except FileNotFoundError:
        return ()


def _remove_temporaries(folder: str) -> list[str]:
    removed = []
    for name in _leftovers(folder):
        path = os.path.join(folder, name)
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _claim_folders(root: str) -> list[str]:
    """``<root>/<namespace>/<claim>`` folders (symlinks are not followed)."""
    return [claim.path for namespace in _subfolders(root) for claim in _subfolders(namespace.path)]


def _subfolders(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return [e for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _sparse(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _grow(path: str, size: int) -> None:
    """A raw image smaller than the claim's size is grown to it (sparse), as CDI does."""
    if os.stat(path).st_size < size:
        os.truncate(path, size)


def _publish(temporary: str, final: str) -> None:
    fd = os.open(temporary, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, final)
    folder = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
