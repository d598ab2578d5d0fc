"""Whether QEMU's user can reach the agent's state folder: checked when the agent starts."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import TYPE_CHECKING

from agent.config.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import Settings

__all__ = ["check_state_dir"]


def check_state_dir(settings: Settings) -> None:
    """Raise ConfigError when QEMU's user cannot traverse to ``state-dir``: every disk VM
    would fail to start on its overlay ("Permission denied"), so say it now, not then."""
    try:
        user = pwd.getpwnam(settings.qemu_user) if settings.qemu_user else None
    except KeyError:
        user = None  # not this distribution's name for it: nothing to check against
    if user is None or user.pw_uid == 0:
        return
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    state_dir = os.path.abspath(settings.state_dir)
    folder = state_dir
    folders = []
    while True:
        folders.append(folder)
        if folder == os.path.dirname(folder):
            break
        folder = os.path.dirname(folder)
    for folder in reversed(folders):
        try:
            info = os.stat(folder)
        except FileNotFoundError:
            return  # the agent makes the rest (traversable)
        if not _traversable(info, user.pw_uid, groups):
            raise ConfigError(
                f"state-dir: QEMU's user {user.pw_name} cannot reach {state_dir}: {folder} "
                f"is {stat.filemode(info.st_mode)} (owner uid {info.st_uid}); make it "
                f"traversable (chmod o+x {folder}) or choose another --state-dir"
            )


def _traversable(info: os.stat_result, uid: int, groups: set[int]) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)
