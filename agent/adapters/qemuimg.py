"""QemuImg: disk image files through the qemu-img command (the only place that runs it)."""

from __future__ import annotations

import json
import os
import subprocess

from agent.errors import FailedPrecondition
from agent.ports import ImageInfo

__all__ = ["QemuImg"]


class QemuImg:
    """Reads image formats and creates overlays and blank disks.

    Usage::

        tool = QemuImg()
        fmt = tool.format_of("/images/base.qcow2")
        tool.create_overlay("/images/base.qcow2", fmt, "/state/vm/root.qcow2")
    """

    def __init__(
        self, binary: str = "qemu-img", timeout: float = 60.0, convert_timeout: float = 3600.0
    ) -> None:
        self.binary = binary
        self.timeout = timeout
        self.convert_timeout = convert_timeout  # a whole image copied (DataVolume imports)

    def _run(self, args: list[str], what: str) -> str:
        return self._run_for(args, what, self.timeout)

    def _run_for(self, args: list[str], what: str, timeout: float) -> str:
        try:
            done = subprocess.run(
                [self.binary, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FailedPrecondition(f"{what}: {exc}") from exc
        if done.returncode != 0:
            raise FailedPrecondition(f"{what}: {done.stderr.strip()}")
        return done.stdout

    def inspect(self, path: str) -> ImageInfo:
        """The image's format and the other files it names (``agent.disks.imagecheck``
        decides what is acceptable)."""
        # --force-share: the image may be in use as a backing file by a running VM.
        out = self._run(["info", "--output=json", "--force-share", path], f"reading {path}")
        info = json.loads(out)
        specific = info.get("format-specific", {}).get("data", {})
        data_file = specific.get("data-file", "") if isinstance(specific, dict) else ""
        return ImageInfo(
            format=str(info.get("format", "")),
            backing_file=str(info.get("backing-filename", "")),
            data_file=str(data_file or ""),
        )

    def create_overlay(self, base: str, base_format: str, path: str) -> None:
        """A qcow2 file that reads from ``base`` and takes every write itself."""
        tmp = f"{path}.tmp"
        self._run(
            ["create", "-q", "-f", "qcow2", "-F", base_format, "-b", base, tmp],
            f"creating overlay {path}",
        )
        os.replace(tmp, path)

    def virtual_size(self, path: str, fmt: str) -> int:
        """The size of the disk the image holds (not of the file)."""
        out = self._run(
            ["info", "--output=json", "--force-share", "-f", fmt, path], f"reading {path}"
        )
        return int(json.loads(out).get("virtual-size", 0))

    def convert_to_raw(self, source: str, source_format: str, target: str) -> None:
        """Copy ``source`` into a new sparse raw file ``target`` (a DataVolume import)."""
        self._run_for(
            ["convert", "-q", "-f", source_format, "-O", "raw", "-S", "4k", source, target],
            f"converting {source}",
            self.convert_timeout,
        )

    def create_blank(self, path: str, size_bytes: int, fmt: str = "qcow2") -> None:
        tmp = f"{path}.tmp"
        self._run(["create", "-q", "-f", fmt, tmp, str(size_bytes)], f"creating disk {path}")
        os.replace(tmp, path)
