"""ContainerDisks: make a container disk available on the node, pulling it when needed.

Resolve the reference to an image manifest (an index gives its linux/amd64 entry), then
either reuse the cache entry for that manifest digest or download every layer, each checked
against its digest while it streams, take the disk file from ``/disk/``, check its format
(qcow2 or raw, no backing file) and publish it to the cache in one rename.

Pull policy (Kubernetes' rules): ``Always`` asks the registry for the manifest each time (blobs
are still reused by digest); ``IfNotPresent`` uses what a tag last resolved to when that is
cached; ``Never`` only uses the cache. Unset means ``Always`` for ``:latest``, else
``IfNotPresent``. A reference by digest never needs the registry once cached, including the
digest of an index (the cache records which of its manifests was pulled).

Errors: ``FailedPrecondition`` when the registry answers that the image cannot be had (not
found, denied, tampered content, not a containerdisk), ``Unavailable`` when it cannot be
reached (retry). Callers prefix the field path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import agent.metrics.agent_metrics as agent_metrics
from agent.disks.cache import CacheEntry, ImageCache
from agent.disks.imagecheck import usable_format
from agent.disks.layers import DEFAULT_LIMITS, DiskSearch, LayerError, LayerLimits
from agent.disks.manifest import (
    ACCEPT,
    LAYER_TYPES,
    DigestWriter,
    Index,
    Manifest,
    ManifestError,
    check_digest,
    digest_of,
    parse_manifest,
    select_platform,
)
from agent.disks.ports import RegistryClient
from agent.errors import FailedPrecondition, InvalidSpec, Unavailable
from agent.imageref import ImageRef
from agent.ports import ImageTool

__all__ = ["ContainerDisks", "Progress", "cache_key", "effective_policy"]

log = logging.getLogger(__name__)

# (done_bytes, total_bytes): called when a download starts, as it goes, and when it ends.
Progress = Callable[[int, int], None]
_PROGRESS_STEP = 4 * 1024 * 1024


def cache_key(digest: str, path: str) -> str:
    """The cache entry's name: the manifest digest, plus the disk's path when one is named
    (the same image can hold several disks)."""
    if not path:
        return digest
    return f"{digest}+{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def effective_policy(image: ImageRef, policy: str) -> str:
    """The pull policy in force: the given one, else Kubernetes' default for the tag."""
    if policy:
        return policy
    return "Always" if image.tag == "latest" and not image.digest else "IfNotPresent"


@dataclass(frozen=True, slots=True)
class _Resolved:
    digest: str
    manifest: Manifest | None  # None: known from the cache only, not fetched


class ContainerDisks:
    """Container disks through a registry client and the node's cache.

    Usage::

        disks = ContainerDisks(HttpxRegistry(...), ImageCache(...), QemuImg())
        entry = disks.ensure(parse_reference("reg:5000/disks/fedora:40"), "", "default_web")
        disks.release("default_web")    # on delete; then disks.gc()
    """

    def __init__(
        self,
        client: RegistryClient,
        cache: ImageCache,
        images: ImageTool,
        *,
        limits: LayerLimits = DEFAULT_LIMITS,
        pull_timeout: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.cache = cache
        self.images = images
        self.limits = limits
        # The registry client bounds each read; this bounds the whole pull (a registry
        # trickling bytes would otherwise hold a call slot for ever).
        self.pull_timeout = pull_timeout
        self.clock = clock

    def ensure(
        self,
        image: ImageRef,
        policy: str,
        user: str,
        *,
        path: str = "",
        progress: Progress | None = None,
    ) -> CacheEntry:
        """The cache entry of ``image`` with ``user`` recorded on it; pulls if needed."""
        policy = effective_policy(image, policy)
        resolved = self._resolve(image, policy, path)
        key = cache_key(resolved.digest, path)
        entry = self.cache.acquire(key, user)
        if entry is not None:
            log.info("container disk %s (%s) is cached", image, resolved.digest)
            return entry
        with self.cache.pull_lock(key):
            entry = self.cache.acquire(key, user)  # pulled while we waited
            if entry is not None:
                return entry
            if policy == "Never":
                raise FailedPrecondition(f"{image} is not cached and imagePullPolicy is Never")
            manifest = resolved.manifest
            if manifest is None:
                manifest = self._fetch_manifest(image, resolved.digest)
            return self._pull(image, key, manifest, user, path, progress)

    def digest_in_use(self, image: ImageRef, path: str, user: str) -> str:
        """The manifest digest of the cached entry ``user`` runs ``image`` (``path`` in it)
        from; "" when none is recorded."""
        candidates = []
        for key in self.cache.entries():
            digest = key.split("+")[0]
            if key != cache_key(digest, path) or user not in self.cache.users(key):
                continue
            entry = self.cache.entry(key)
            if entry is not None and entry.image == str(image):
                return digest
            candidates.append(digest)
        # Pulled first under another spelling of the reference: one entry is unambiguous.
        return candidates[0] if len(candidates) == 1 else ""

    def release(self, user: str) -> None:
        self.cache.release(user)

    def gc(self) -> list[str]:
        return self.cache.gc()

    # -- manifests ------------------------------------------------------------------------

    def _resolve(self, image: ImageRef, policy: str, path: str) -> _Resolved:
        cached = self._cached_digest(image, policy, path)
        if cached:
            return _Resolved(cached, None)
        if policy == "Never":
            raise FailedPrecondition(f"{image} is not cached and imagePullPolicy is Never")
        digest, manifest = self._fetch_top(image)
        if not image.digest:
            self.cache.remember_tag(str(image), digest)
        elif digest != image.digest:
            # An index: entries are keyed by its linux/amd64 manifest, so record which one
            # (that never changes, unlike what a tag names).
            self.cache.remember_tag(image.digest, digest)
        return _Resolved(digest, manifest)

    def _cached_digest(self, image: ImageRef, policy: str, path: str) -> str:
        """The manifest digest of a cached entry ``image`` may use without the registry."""
        if image.digest:
            candidates = [image.digest, self.cache.tagged(image.digest)]
        elif policy != "Always":
            candidates = [self.cache.tagged(str(image))]
        else:
            return ""
        for digest in candidates:
            if digest and self.cache.has(cache_key(digest, path)):
                return digest
        return ""

    def _fetch_top(self, image: ImageRef) -> tuple[str, Manifest]:
        """Fetch what the reference names; follow an index to its linux/amd64 manifest."""
        fetched = self.client.get_manifest(image, image.reference, ACCEPT)
        digest = image.digest or digest_of(fetched.body)
        try:
            check_digest(fetched.body, digest)
            if fetched.digest_header.startswith("sha256:") and fetched.digest_header != digest:
                raise ManifestError(
                    f"registry says the manifest is {fetched.digest_header}, its content is "
                    f"{digest}"
                )
            parsed = parse_manifest(fetched.body, fetched.content_type)
            if isinstance(parsed, Index):
                digest = select_platform(parsed).digest
                return digest, self._fetch_manifest(image, digest)
            return digest, parsed
        except ManifestError as exc:
            raise FailedPrecondition(f"manifest of {image}: {exc}") from exc

    def _fetch_manifest(self, image: ImageRef, digest: str) -> Manifest:
        fetched = self.client.get_manifest(image, digest, ACCEPT)
        try:
            check_digest(fetched.body, digest)
            parsed = parse_manifest(fetched.body, fetched.content_type)
        except ManifestError as exc:
            raise FailedPrecondition(f"manifest {digest} of {image}: {exc}") from exc
        if isinstance(parsed, Index):
            raise FailedPrecondition(f"{image}: an index inside an index is not supported")
        return parsed

    # -- blobs ----------------------------------------------------------------------------

    def _pull(
        self,
        image: ImageRef,
        key: str,
        manifest: Manifest,
        user: str,
        path: str,
        progress: Progress | None,
    ) -> CacheEntry:
        for layer in manifest.layers:
            if layer.media_type and layer.media_type not in LAYER_TYPES:
                raise FailedPrecondition(
                    f"{image}: layer {layer.digest} is {layer.media_type}; only tar and "
                    "tar+gzip layers are supported"
                )
        total = manifest.total_size
        log.info("pulling container disk %s (%s, %d bytes)", image, key, total)
        report = progress or (lambda done, total: None)
        report(0, total)
        with agent_metrics.image_pull(total), self.cache.workdir() as workdir:
            try:
                search = DiskSearch(workdir, wanted=path, limits=self.limits)
                done = 0
                deadline = self.clock() + self.pull_timeout
                for number, layer in enumerate(manifest.layers):
                    blob = os.path.join(workdir, f"layer-{number}")
                    done = self._download(image, layer.digest, layer.size, blob, done, total,
                                          report, deadline)  # fmt: skip
                    search.apply_layer(blob)
                    os.unlink(blob)
                disk = search.result()
            except (ManifestError, LayerError) as exc:
                raise FailedPrecondition(f"{image}: {exc}") from exc
            try:
                fmt = usable_format(self.images.inspect(disk), disk, "")
            except InvalidSpec as exc:  # e.g. a backing file: the image is at fault
                raise FailedPrecondition(f"{image}: the disk in /disk/: {exc.problem}") from exc
            entry = self.cache.publish(key, workdir, disk, fmt=fmt, image=str(image), user=user)
        report(total, total)
        log.info("container disk %s cached as %s (%s)", image, key, fmt)
        return entry

    def _download(
        self,
        image: ImageRef,
        digest: str,
        size: int,
        target: str,
        done: int,
        total: int,
        report: Progress,
        deadline: float,
    ) -> int:
        log.info("downloading blob %s of %s (%d bytes)", digest, image, size)
        with open(target, "xb") as out:
            last = [done]

            def sink(chunk: bytes) -> None:
                if self.clock() > deadline:
                    raise Unavailable(
                        f"{image}: the pull took longer than {self.pull_timeout:.0f}s "
                        "(--pull-timeout); retry"
                    )
                out.write(chunk)
                now = done + writer.done
                if now - last[0] >= _PROGRESS_STEP:
                    last[0] = now
                    report(now, total)

            writer = DigestWriter(digest, size, sink)
            try:
                self.client.get_blob(image, digest, writer.write)
                writer.verify()
            except ManifestError as exc:
                raise FailedPrecondition(f"{image}: blob {digest}: {exc}") from exc
        report(done + size, total)
        return done + size
