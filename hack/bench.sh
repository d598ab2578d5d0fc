#!/usr/bin/env bash
# Run the benchmarks of issue 15 (agent against raw libvirt, same run) and write
# bench/results/latest.{json,md} and the README's table; --quick / --only NAME write
# bench/results/dev.{json,md} instead. Needs root (nodes in a box, network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "hack/bench.sh: needs root (network namespaces, libvirtd)" >&2; exit 1; }
PY=.venv/bin/python
hack/build-test-guest.sh >/dev/null  # cached: cheap when built already
exec env PYTHONPATH="$PWD" "$PY" -m bench.run "$@"
