#!/usr/bin/env bash
# The load test (tests/api/test_load.py) as a soak: the same 50 clients of mixed
# Get/List/Watch/Apply/Delete on libvirt's test driver, over loopback, for longer.
# Usage: hack/soak.sh [SECONDS]   (default 600); prints threads, fds and RSS before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
export VIRT_AGENT_SOAK_SECONDS="${1:-600}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m pytest tests/api/test_load.py -q -s -p no:cacheprovider
