"""Entry point of the `vmctl` operator CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run vmctl."""
    print("usage: vmctl COMMAND")
    return 0


if __name__ == "__main__":
    sys.exit(main())
