"""Host disks: raw image files on the node, used in place, under ``--host-disk-root`` only.

``type: Disk`` needs the file; ``DiskOrCreate`` makes a sparse raw file of ``capacity`` once
and uses what is there afterwards. Creation is whole or not at all: a capacity the
filesystem refuses is an InvalidSpec on the capacity and leaves no file behind.

The path is checked component by component (no '..', no symlink: GHSA-46xp-26xh-hpqh made
KubeVirt's DiskOrCreate write root-owned files), and the file is then created relative to
directory descriptors opened with O_NOFOLLOW, under a temporary name with O_EXCL, and linked
into place, so a symlink swapped in after the check is never followed.

Host disks are always raw, as in KubeVirt: probing the format of a file a guest can write
would let the guest turn it into a qcow2 pointing at a host file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Sequence

from agent.errors import InvalidSpec
from agent.models import HostDisk
from agent.paths import resolve_under_roots
from agent.quantity import format_bytes

__all__ = ["host_disk_path"]


def host_disk_path(roots: Sequence[str], source: HostDisk, field: str) -> str:
    """The absolute path of the host disk, created if ``DiskOrCreate`` and missing."""
    if not roots:
        raise InvalidSpec(field, "hostDisk is not enabled on this node (no --host-disk-root)")
    create = source.type == "DiskOrCreate"
    path = resolve_under_roots(
        roots, source.path, field, must_exist=not create, roots_name="host disk roots"
    )
    if create and not os.path.lexists(path):
        root = next(r for r in map(os.path.abspath, roots) if path.startswith(r.rstrip("/") + "/"))
        _create_beneath(root, os.path.relpath(path, root), source.capacity_bytes, field)
    return path


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _create_beneath(root: str, relative: str, size: int, field: str) -> None:
    """Create ``root/relative`` (sparse, ``size`` bytes) without following any symlink."""
    parts = relative.split("/")
    fds = [os.open(root, _DIR_FLAGS)]
    try:
        for part in parts[:-1]:
            try:
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            except OSError as exc:
                raise InvalidSpec(field, f"{relative!r}: {part!r} is not a plain folder") from exc
        _create_whole(fds[-1], parts[-1], size, field)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _create_whole(folder: int, name: str, size: int, field: str) -> None:
    """Make ``name`` in ``folder`` at its full size or not at all.

    The file is sized under a temporary name and then hard-linked into place: a size the
    filesystem refuses (or a crash) never leaves an empty disk for the next apply to boot
    from, and link() fails rather than replace a file someone else made meanwhile.
    """
    temp = f".{secrets.token_hex(8)}.creating"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o660, dir_fd=folder)
    try:
        try:
            _set_size(fd, size, field)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # made since the check: Disk from here on
            os.link(temp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
    finally:
        os.unlink(temp, dir_fd=folder)


def _set_size(fd: int, size: int, field: str) -> None:
    try:
        os.ftruncate(fd, size)
    except OverflowError as exc:  # beyond off_t, so beyond any filesystem
        raise _too_large(field, size) from exc
    except OSError as exc:
        if exc.errno not in (errno.EFBIG, errno.EINVAL):
            raise
        raise _too_large(field, size) from exc


def _too_large(path_field: str, size: int) -> InvalidSpec:
    # Callers name the hostDisk's path field; the capacity is its sibling.
    parent, _, _ = path_field.rpartition(".")
    field = f"{parent}.capacity" if parent else "capacity"
    return InvalidSpec(field, f"{format_bytes(size)} is larger than a file on this node can be")
