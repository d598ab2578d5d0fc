"""Confine client-supplied paths to allow-listed roots: no '..', no symlinks on the way.

KubeVirt's CVE-2022-1798 (relative kernel paths reading host files) and the symlink
advisories are the cases this refuses. Each component is checked with lstat, so a symlink
anywhere under the root (including the final file) is refused rather than followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from agent.errors import InvalidSpec

__all__ = ["resolve_under_roots"]


def resolve_under_roots(
    roots: Sequence[str],
    path: str,
    field: str,
    *,
    must_exist: bool = True,
    roots_name: str = "image roots",
) -> str:
    """Return the absolute path of ``path`` under the first root that holds it.

    ``path`` is relative to a root, or absolute and inside one. Raises InvalidSpec naming
    ``field`` for '..', a path outside every root, a symlink on the way, or (with
    ``must_exist``) a missing or non-regular file.
    """
    if not roots:
        raise InvalidSpec(field, "no image root is configured on this node (--image-root)")
    if "\x00" in path or ".." in path.split("/"):
        raise InvalidSpec(field, f"{path!r} must not contain '..'")
    candidates: list[tuple[str, str]] = []
    for root in roots:
        root = os.path.abspath(root)
        if os.path.isabs(path):
            if path == root or not path.startswith(root.rstrip("/") + "/"):
                continue
            candidates.append((root, os.path.relpath(path, root)))
        else:
            candidates.append((root, path))
    if not candidates:
        raise InvalidSpec(field, f"{path!r} is outside the {roots_name} ({', '.join(roots)})")
    problem = ""
    for root, relative in candidates:
        found, problem = _walk(root, relative, must_exist=must_exist)
        if found:
            return found
    raise InvalidSpec(field, problem)


def _walk(root: str, relative: str, *, must_exist: bool) -> tuple[str, str]:
    """Check each component under root; return (path, "") or ("", why not)."""
    current = root
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts:
        return "", f"{relative!r} names no file"
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if must_exist or index < len(parts) - 1:
                return "", f"{relative!r} does not exist under {root}"
            return current, ""
        if stat.S_ISLNK(info.st_mode):
            return "", f"{relative!r}: {current} is a symlink, which is not allowed"
        last = index == len(parts) - 1
        if not last and not stat.S_ISDIR(info.st_mode):
            return "", f"{relative!r}: {current} is not a directory"
        if last and not stat.S_ISREG(info.st_mode):
            return "", f"{relative!r} is not a regular file"
    return current, ""
