"""The error of a wrong setting."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it."""
