"""The node's container-disk cache: one read-only entry per manifest digest, shared by VMs.

Entries are keyed by the manifest digest (``+<hash>`` of the disk's path inside the image
when a volume names one). Layout under the cache folder::

    entries/sha256-<hex>/disk.img        the disk (0444; QEMU opens it as a read-only backing)
    entries/sha256-<hex>/entry.json      image, digest, format, size, pull time
    entries/sha256-<hex>/users/<domain>  one empty file per VM using the entry
    tags/<hash of the reference>.json    last digest a tag (or an index digest) resolved to
    tmp/<random>/                        pulls in flight; an entry appears by one rename

An entry only ever appears whole (built in ``tmp/``, renamed into ``entries/``), so a failed
or interrupted pull leaves no entry. A VM is recorded as a user, under the cache lock, before
its overlay is made; garbage collection removes entries whose users are all gone (a user
whose VM folder no longer exists is stale: the VM was deleted while the agent was down).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["CacheEntry", "ImageCache"]

log = logging.getLogger(__name__)

_DISK = "disk.img"
_META = "entry.json"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached disk: where it is, its format, and which image and digest it came from."""

    digest: str
    path: str
    format: str
    image: str
    size: int


def _entry_name(digest: str) -> str:
    return digest.replace(":", "-")


class ImageCache:
    """Cache entries by digest, the VMs using them, and garbage collection.

    Usage::

        cache = ImageCache("/var/lib/virt-agent/containerdisks", vm_exists=os.path.isdir...)
        with cache.workdir() as tmp: ...; entry = cache.publish(digest, tmp, ..., user=dom)
        entry = cache.acquire(digest, "default_web")   # None when not cached
        cache.release("default_web"); cache.gc()
    """

    def __init__(self, root: str, *, vm_exists: Callable[[str], bool]) -> None:
        self.root = os.path.abspath(root)
        self.vm_exists = vm_exists
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}
        for sub in ("entries", "tags", "tmp"):
            # QEMU (another user) must reach the disks: folders are world-searchable.
            os.makedirs(os.path.join(self.root, sub), mode=0o755, exist_ok=True)
        os.chmod(self.root, 0o755)
        # No pull is in flight when the cache is made: whatever is in tmp/ was interrupted.
        for leftover in sorted(os.listdir(self._path("tmp"))):
            log.warning(
                "repaired: image cache: removed %s (a pull or cleanup interrupted mid-way; "
                "the next pull fetches its blobs again)",
                self._path("tmp", leftover),
            )
            _remove(self._path("tmp", leftover))

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def pull_lock(self, digest: str) -> threading.Lock:
        """Held while pulling ``digest``: two VMs wanting one image download it once."""
        with self._lock:
            return self._digest_locks.setdefault(digest, threading.Lock())

    # -- tags -----------------------------------------------------------------------------

    def _tag_file(self, image: str) -> str:
        return self._path("tags", hashlib.sha256(image.encode()).hexdigest()[:32] + ".json")

    def tagged(self, image: str) -> str:
        """The digest ``image`` (a tag reference, or an index's digest) last resolved to; ""
        if not known."""
        try:
            with open(self._tag_file(image)) as handle:
                return str(json.load(handle).get("digest", ""))
        except (OSError, ValueError, AttributeError):
            return ""

    def remember_tag(self, image: str, digest: str) -> None:
        _write_json(self._tag_file(image), {"image": image, "digest": digest}, self._path("tmp"))

    # -- entries --------------------------------------------------------------------------

    @contextlib.contextmanager
    def workdir(self) -> Iterator[str]:
        """A private folder for one pull, removed afterwards whatever happens."""
        path = self._path("tmp", f"pull-{secrets.token_hex(6)}")
        os.mkdir(path, 0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _read(self, digest: str) -> CacheEntry | None:
        folder = self._path("entries", _entry_name(digest))
        try:
            with open(os.path.join(folder, _META)) as handle:
                meta = json.load(handle)
            return CacheEntry(
                digest=digest,
                path=os.path.join(folder, _DISK),
                format=str(meta["format"]),
                image=str(meta["image"]),
                size=int(meta["size"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def entry(self, digest: str) -> CacheEntry | None:
        return self._read(digest)

    def has(self, digest: str) -> bool:
        return self._read(digest) is not None

    def acquire(self, digest: str, user: str) -> CacheEntry | None:
        """Record ``user`` on the entry of ``digest`` and return it; None if not cached."""
        with self._lock:
            entry = self._read(digest)
            if entry is not None:
                self._add_user(digest, user)
            return entry

    def publish(
        self, digest: str, workdir: str, disk: str, *, fmt: str, image: str, user: str
    ) -> CacheEntry:
        """Move a pulled, verified ``disk`` (inside ``workdir``) into the cache for ``user``."""
        folder = os.path.join(workdir, "entry")
        os.mkdir(folder, 0o755)
        size = os.path.getsize(disk)
        os.chmod(disk, 0o444)  # never written: VMs write to their own overlays
        os.rename(disk, os.path.join(folder, _DISK))
        meta = {"image": image, "digest": digest, "format": fmt, "size": size,
                "pulled_at": time.time()}  # fmt: skip
        _write_json(os.path.join(folder, _META), meta, workdir)
        os.mkdir(os.path.join(folder, "users"), 0o755)
        with self._lock:
            target = self._path("entries", _entry_name(digest))
            if not os.path.isdir(target):
                os.rename(folder, target)
            self._add_user(digest, user)
            entry = self._read(digest)
        if entry is None:
            raise OSError(f"cache entry {target} is unreadable right after it was written")
        return entry

    def _add_user(self, digest: str, user: str) -> None:
        if not user or "/" in user or user.startswith("."):
            raise ValueError(f"cache user {user!r} is not a domain name")
        users = self._path("entries", _entry_name(digest), "users")
        os.makedirs(users, mode=0o755, exist_ok=True)
        with open(os.path.join(users, user), "a"):
            pass

    def release(self, user: str) -> None:
        """Forget ``user`` on every entry (its VM is gone); run ``gc`` to reclaim space."""
        with self._lock:
            for name in os.listdir(self._path("entries")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path("entries", name, "users", user))

    def users(self, digest: str) -> list[str]:
        folder = self._path("entries", _entry_name(digest), "users")
        try:
            return sorted(os.listdir(folder))
        except FileNotFoundError:
            return []

    def entries(self) -> list[str]:
        """Digests of the cached entries."""
        return sorted(n.replace("-", ":", 1) for n in os.listdir(self._path("entries")))

    def gc(self) -> list[str]:
        """Remove entries no VM uses (dropping stale users first); returns their digests."""
        removed = []
        with self._lock:
            for name in os.listdir(self._path("entries")):
                users = self._path("entries", name, "users")
                live = []
                for user in os.listdir(users) if os.path.isdir(users) else []:
                    if self.vm_exists(user):
                        live.append(user)
                    else:
                        os.unlink(os.path.join(users, user))
                if live:
                    continue
                # Renamed away first, so a half-deleted entry never looks like a whole one.
                doomed = self._path("tmp", f"gc-{secrets.token_hex(6)}")
                os.rename(self._path("entries", name), doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(name.replace("-", ":", 1))
            self._drop_tags(set(removed))
        for digest in removed:
            log.info("removed unused container disk %s from the cache", digest)
        return removed

    def _drop_tags(self, digests: set[str]) -> None:
        if not digests:
            return
        for name in os.listdir(self._path("tags")):
            path = self._path("tags", name)
            try:
                with open(path) as handle:
                    digest = json.load(handle).get("digest")
            except (OSError, ValueError, AttributeError):
                digest = None
            if digest is None or any(d.split("+")[0] == digest for d in digests):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def _write_json(path: str, data: object, tmp_dir: str) -> None:
    tmp = os.path.join(tmp_dir, f".{os.path.basename(path)}.{secrets.token_hex(4)}")
    with open(tmp, "w") as handle:
        json.dump(data, handle, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _remove(path: str) -> None:
    """A folder or a file (the temporary file of a tag being written)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
