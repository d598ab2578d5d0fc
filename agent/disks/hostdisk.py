"""Host disks: raw image files on the node, used in place, under ``--host-disk-root`` only.

``type: Disk`` needs the file; ``DiskOrCreate`` makes a sparse raw file of ``capacity`` once
and uses what is there afterwards. The path is checked component by component (no '..', no
symlink: GHSA-46xp-26xh-hpqh made KubeVirt's DiskOrCreate write root-owned files), and the
file is then created relative to directory descriptors opened with O_NOFOLLOW, with O_EXCL,
so a symlink swapped in after the check is refused rather than followed.

Host disks are always raw, as in KubeVirt: probing the format of a file a guest can write
would let the guest turn it into a qcow2 pointing at a host file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence

from agent.errors import InvalidSpec
from agent.models import HostDisk
from agent.paths import resolve_under_roots

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


def _create_beneath(root: str, relative: str, size: int, field: str) -> None:
    """Create ``root/relative`` (sparse, ``size`` bytes) without following any symlink."""
    parts = relative.split("/")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds = [os.open(root, flags)]
    try:
        for part in parts[:-1]:
            try:
                fds.append(os.open(part, flags, dir_fd=fds[-1]))
            except OSError as exc:
                raise InvalidSpec(field, f"{relative!r}: {part!r} is not a plain folder") from exc
        try:
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o660,
                dir_fd=fds[-1],
            )
        except FileExistsError:
            return  # made by someone else since the check; Disk semantics from here on
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidSpec(field, f"{relative!r} is a symlink") from exc
            raise
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
