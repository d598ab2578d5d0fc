"""The files of a DataVolume claim's folder: temporaries of an import, the publish of
``disk.img`` (never replacing one), and the owner mark of the VM whose import made it."""

from __future__ import annotations

import os
import secrets
import stat

from agent.disks.claimdisks import pin_format
from agent.disks.dvplan import TEMP_PREFIX
from agent.errors import FailedPrecondition, InvalidSpec

__all__ = [
    "OWNER_MARK",
    "claim_folders",
    "grow",
    "leftovers",
    "make_folders",
    "owner_of",
    "publish",
    "remove_temporaries",
    "sparse",
]

OWNER_MARK = ".virt-agent-owner"  # in the claim's folder: the VM whose import made it
FOLDER_MODE = 0o711
FILE_MODE = 0o600


def make_folders(folder: str, field: str) -> None:
    """Create ``<root>/<namespace>/<name>``; a symlink on the way is refused."""
    namespace_dir = os.path.dirname(folder)
    for path in (os.path.dirname(namespace_dir), namespace_dir, folder):
        try:
            os.mkdir(path, FOLDER_MODE)
        except FileExistsError:
            pass
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise InvalidSpec(field, f"{path} is not a folder (a symlink is not allowed)")


def leftovers(folder: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)))
    except FileNotFoundError:
        return ()


def remove_temporaries(folder: str) -> list[str]:
    removed = []
    for name in leftovers(folder):
        path = os.path.join(folder, name)
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def claim_folders(root: str) -> list[str]:
    """``<root>/<namespace>/<claim>`` folders (symlinks are not followed)."""
    return [claim.path for namespace in _subfolders(root) for claim in _subfolders(namespace.path)]


def _subfolders(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return [e for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def sparse(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def grow(path: str, size: int) -> None:
    """A raw image smaller than the claim's size is grown to it (sparse), as CDI does."""
    if os.stat(path).st_size < size:
        os.truncate(path, size)


def publish(temporary: str, final: str, owner: str) -> None:
    """Make the raw ``temporary`` the claim's ``final`` image, pinned raw and marked as
    ``owner``'s. A ``final`` that appeared meanwhile (a provisioner's) is never replaced."""
    fd = os.open(temporary, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.path.dirname(final)
    try:
        os.link(temporary, final)  # unlike rename, fails when final exists
    except FileExistsError:
        raise FailedPrecondition(
            f"{final} appeared while the import ran (put there by someone else); it is "
            "kept as it is and the import is dropped"
        ) from None
    os.unlink(temporary)
    pin_format(folder, "raw")
    _write_whole(os.path.join(folder, OWNER_MARK), owner)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def owner_of(folder: str) -> str:
    """The owner mark of the claim in ``folder``; "" when it has none."""
    try:
        fd = os.open(os.path.join(folder, OWNER_MARK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd) as mark:
        return mark.read(512).strip()


def _write_whole(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(temporary, flags, 0o644), "w") as handle:
        handle.write(text + "\n")
    os.replace(temporary, path)
