"""Entry point of the `virt-agent` daemon."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the agent daemon (wired up by the lifecycle work)."""
    print("usage: virt-agent [options]  (the daemon arrives with the lifecycle API)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
