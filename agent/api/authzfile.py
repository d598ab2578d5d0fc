"""The ``--authz-config`` file: its rules, read again whenever the file changes on disk."""

from __future__ import annotations

import logging
import os
import threading

import yaml

from agent.api.authz import Policy, parse_policy
from agent.errors import InvalidSpec

__all__ = ["PolicyFile", "load_policy"]

log = logging.getLogger(__name__)


def load_policy(path: str) -> Policy:
    """The rules in ``path``; an unreadable or wrong file raises InvalidSpec naming it."""
    try:
        with open(path) as handle:
            document = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidSpec("authz-config", f"cannot read {path}: {exc}") from None
    try:
        return parse_policy(document)
    except InvalidSpec as exc:
        raise InvalidSpec("authz-config", f"{path}: {exc}") from None


def _fingerprint(path: str) -> tuple[int, int, int] | None:
    try:
        # Follows symlinks: a ConfigMap update swaps the ..data link, giving a new inode.
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class PolicyFile:
    """The current rules of one file; a stat per call notices changes, a bad change is ignored.

    A file that becomes unreadable or wrong keeps the last good rules (and is logged): a typo
    in a ConfigMap must not lock the control plane out, nor open the agent up.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen = _fingerprint(path)
        self._policy = load_policy(path)  # a wrong file at startup stops the agent

    def __call__(self) -> Policy:
        seen = _fingerprint(self.path)
        if seen == self._seen or seen is None:
            return self._policy
        with self._lock:
            if seen != self._seen:
                self._seen = seen
                try:
                    self._policy = load_policy(self.path)
                    log.info("authz rules reloaded from %s", self.path)
                except InvalidSpec as exc:
                    log.error("authz rules not reloaded, keeping the previous ones: %s", exc)
            return self._policy
