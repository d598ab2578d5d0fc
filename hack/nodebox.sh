#!/usr/bin/env bash
# A node in a box for humans: a private "world" network (192.0.2.1, HTTP server) and node-a
# (192.0.2.11) with its own network and mount namespaces, virtlogd and libvirtd.
#   hack/nodebox.sh up [DIR] [--two]   start (--two: node-a and node-b), print how to use it
#   hack/nodebox.sh down [DIR]         stop everything recorded in DIR/nodebox-state.json
# DIR defaults to /tmp/virt-agent-nodebox. Needs root. Same code as the test fixtures
# (tests/testbed/nodebox.py); nothing is changed in the machine's own network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-}
case $cmd in
  up | down) shift ;;
  *) echo "usage: $0 up|down [DIR] [--two]" >&2; exit 2 ;;
esac
dir=/tmp/virt-agent-nodebox
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then dir=$1; shift; fi
exec .venv/bin/python -m tests.testbed.nodebox "$cmd" --dir "$dir" "$@"
