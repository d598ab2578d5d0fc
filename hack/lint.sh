#!/usr/bin/env bash
# Lint and type-check: ruff format, ruff check, mypy --strict on agent/, stale generated code, buf lint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PY_DIRS=(agent tests hack)
[ -d bench ] && PY_DIRS+=(bench)
"$BIN/ruff" format --check "${PY_DIRS[@]}"
"$BIN/ruff" check "${PY_DIRS[@]}"
"$BIN/mypy" --strict agent
PY="$BIN/python" hack/gen-proto.sh --check
if [ -x .cache/node/node_modules/.bin/buf ]; then
  (cd proto && ../.cache/node/node_modules/.bin/buf lint)
  echo "buf lint: clean"
else
  echo "buf lint: skipped (buf not installed; hack/install-deps.sh installs it)" >&2
  [ -z "${CI:-}" ] || exit 1
fi
