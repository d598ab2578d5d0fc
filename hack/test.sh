#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine, as root: installs what is needed,
# builds the test guest, checks lint and types, then runs unit, API and system tests.
# Extra arguments go to pytest (e.g. hack/test.sh -k lifecycle).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
hack/build-test-guest.sh >/dev/null
hack/lint.sh
# System tests need root, libvirtd, QEMU and nftables: missing parts fail the run, never skip.
exec .venv/bin/python -m pytest -ra "$@"
