"""PostCopyProbe: can this node's QEMU be the target of a post-copy migration?

QEMU's destination needs userfaultfd (``postcopy_ram_supported_by_host``); without it the
migration fails at its start with "Postcopy is not supported". Whether QEMU's user may use
it follows the kernel's rules, read here without starting QEMU: a root QEMU always may
(CAP_SYS_PTRACE); any process may with ``vm.unprivileged_userfaultfd = 1``; otherwise only
through ``/dev/userfaultfd`` (kernel ≥ 6.1), which QEMU opens from version 8.1 on, when
that user can read and write it. Libvirt's capabilities do not report it.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable

__all__ = ["PostCopyProbe"]

_SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"
_DEVICE = "/dev/userfaultfd"
_DEVICE_QEMU = (8, 1)  # the first QEMU that opens /dev/userfaultfd


class PostCopyProbe:
    """Call it: "" when post-copy can run into this node, else why not (read once).

    Usage::

        probe = PostCopyProbe("libvirt-qemu", lambda: hv.versions()[1])
        probe()   # 'QEMU runs as libvirt-qemu, vm.unprivileged_userfaultfd is 0 and ...'
    """

    def __init__(
        self,
        qemu_user: str,
        qemu_version: Callable[[], str],
        *,
        sysctl: str = _SYSCTL,
        device: str = _DEVICE,
    ) -> None:
        self.qemu_user = qemu_user
        self.qemu_version = qemu_version
        self.sysctl = sysctl
        self.device = device
        self._answer: str | None = None

    def __call__(self) -> str:
        if self._answer is None:
            self._answer = answer = self._why_not()
            if answer.startswith("QEMU's version is unknown"):
                self._answer = None
            return answer
        return self._answer

    def _why_not(self) -> str:
        try:
            with open(self.sysctl) as handle:
                unprivileged = handle.read().strip() == "1"
        except OSError:
            return "the kernel has no userfaultfd"
        if not self.qemu_user or self.qemu_user == "root" or unprivileged:
            return ""
        try:
            version = self.qemu_version()
        except Exception:  # libvirtd away: ask again next time
            return "QEMU's version is unknown (libvirtd does not answer)"
        if _version(version) >= _DEVICE_QEMU and self._device_usable():
            return ""
        return (
            f"QEMU runs as {self.qemu_user}, vm.unprivileged_userfaultfd is 0 and QEMU "
            f"{version} cannot use {self.device} (it needs QEMU 8.1 and read-write access), "
            "so QEMU answers 'Postcopy is not supported'"
        )

    def _device_usable(self) -> bool:
        try:
            info = os.stat(self.device)
            user = pwd.getpwnam(self.qemu_user)
        except (OSError, KeyError):
            return False
        groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
        mode = info.st_mode
        if info.st_uid == user.pw_uid:
            wanted = stat.S_IRUSR | stat.S_IWUSR
        elif info.st_gid in groups:
            wanted = stat.S_IRGRP | stat.S_IWGRP
        else:
            wanted = stat.S_IROTH | stat.S_IWOTH
        return mode & wanted == wanted


def _version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0", "0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)
