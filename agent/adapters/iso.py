"""PycdlibIso: ISO 9660 images written with pycdlib (the only module importing it).

Files get three names, as genisoimage ``-joliet -rock`` gives them (KubeVirt's NoCloud seed):
an ISO 9660 8.3 name, a Rock Ridge name (what Linux shows: ``meta-data``) and a Joliet name.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping

import pycdlib

__all__ = ["PycdlibIso"]


def _iso_names(names: list[str]) -> dict[str, str]:
    """Unique ISO 9660 level-1 names (``/META_DAT.;1``) for plain file names."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        stem = re.sub(r"[^A-Z0-9_]", "_", name.upper())[:8] or "FILE"
        candidate, number = stem, 0
        while candidate in used:
            number += 1
            candidate = f"{stem[: 8 - len(str(number))]}{number}"
        used.add(candidate)
        out[name] = f"/{candidate}.;1"
    return out


class PycdlibIso:
    """An IsoWriter (see ``agent.disks.ports``).

    Usage::

        PycdlibIso().write_iso("/state/vm/seed.iso", "cidata", {"meta-data": b"..."})
    """

    def write_iso(self, path: str, volume_id: str, files: Mapping[str, bytes]) -> None:
        """Write the image to ``path`` atomically (a temporary file renamed into place)."""
        for name in files:
            if not name or "/" in name or len(name) > 64:
                raise ValueError(f"ISO file name {name!r} must be a plain name")
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=volume_id)
        try:
            for name, iso_name in _iso_names(sorted(files)).items():
                data = files[name]
                iso.add_fp(
                    io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}"
                )
            tmp = f"{path}.tmp"
            iso.write(tmp)
        finally:
            iso.close()
        os.chmod(tmp, 0o600)  # seeds carry secrets; libvirt hands them to QEMU's user
        os.replace(tmp, path)
