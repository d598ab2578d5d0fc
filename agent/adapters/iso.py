"""PycdlibIso: ISO 9660 images written with pycdlib (the only module importing it).

Files get three names, as genisoimage ``-joliet -rock`` gives them (KubeVirt's NoCloud seed):
an ISO 9660 8.3 name, a Rock Ridge name (what Linux shows: ``meta-data``) and a Joliet name.
A file name may hold folders (``openstack/latest/user_data``, a config drive); they are made
with the same three names.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping

__all__ = ["PycdlibIso"]


def _iso_name(name: str, used: set[str]) -> str:
    """A unique ISO 9660 level-1 name (``META_DAT``) among ``used``, for one component."""
    stem = re.sub(r"[^A-Z0-9_]", "_", name.upper())[:8] or "FILE"
    candidate, number = stem, 0
    while candidate in used:
        number += 1
        candidate = f"{stem[: 8 - len(str(number))]}{number}"
    used.add(candidate)
    return candidate


def _check(name: str) -> list[str]:
    parts = name.split("/")
    if len(parts) > 4 or any(not p or p in (".", "..") or len(p) > 64 for p in parts):
        raise ValueError(f"ISO file name {name!r} must be plain names of at most 64 characters")
    return parts


class PycdlibIso:
    """An IsoWriter (see ``agent.disks.ports``).

    Usage::

        PycdlibIso().write_iso("/state/vm/seed.iso", "cidata", {"meta-data": b"..."})
    """

    def write_iso(self, path: str, volume_id: str, files: Mapping[str, bytes]) -> None:
        """Write the image to ``path`` atomically (a temporary file renamed into place)."""
        split = {name: _check(name) for name in files}
        import pycdlib  # noqa: PLC0415 - 2 MiB, loaded by the first VM that needs an ISO

        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=volume_id)
        # (folder's joliet path) -> (its ISO path, the ISO names used in it)
        folders: dict[str, tuple[str, set[str]]] = {"": ("", set())}
        try:
            for name in sorted(files):
                parts, parent = split[name], ""
                for part in parts[:-1]:
                    here = f"{parent}/{part}"
                    if here not in folders:
                        iso_parent, used = folders[parent]
                        iso_path = f"{iso_parent}/{_iso_name(part, used)}"
                        iso.add_directory(iso_path, rr_name=part, joliet_path=here)
                        folders[here] = (iso_path, set())
                    parent = here
                iso_parent, used = folders[parent]
                data = files[name]
                iso.add_fp(
                    io.BytesIO(data),
                    len(data),
                    f"{iso_parent}/{_iso_name(parts[-1], used)}.;1",
                    rr_name=parts[-1],
                    joliet_path=f"{parent}/{parts[-1]}",
                )
            tmp = f"{path}.tmp"
            iso.write(tmp)
        finally:
            iso.close()
        os.chmod(tmp, 0o600)  # seeds carry secrets; libvirt hands them to QEMU's user
        os.replace(tmp, path)
