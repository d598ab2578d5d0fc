"""Entry point of the `virt-agent` daemon."""

from __future__ import annotations

import sys

from agent.config import ConfigError, check_files, check_state_dir, load_settings
from agent.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Parse settings and run the agent; configuration errors exit 2 with the setting named."""
    try:
        settings = load_settings(argv)
        check_files(settings)
        check_state_dir(settings)
    except ConfigError as exc:
        print(f"virt-agent: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    from agent.app import run  # noqa: PLC0415 - keeps --help fast and free of libvirt

    try:
        return run(settings)
    except ConfigError as exc:  # found only when serving starts (a port taken, wrong authz rules)
        print(f"virt-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
