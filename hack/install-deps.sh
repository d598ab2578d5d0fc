#!/usr/bin/env bash
# Installs the Debian packages and the Python virtual environment the agent and its tests need.
# Idempotent: safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libvirt-daemon-system libvirt-dev qemu-system-x86 qemu-utils
  nftables libnftables1 python3-nftables dnsmasq-base conntrack
  busybox-static cpio iproute2 socat curl pkg-config gcc python3-venv python3-dev
  syslinux-common extlinux mtools dosfstools fdisk e2fsprogs
  docker-registry skopeo umoci openssl
  ovmf swtpm swtpm-tools
  prometheus   # promtool, and the Prometheus server the metrics system test starts itself
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian starts a system-wide Prometheus on :9090 when systemd runs; the tests start
  # their own (by pid, in a node's network namespace) and need none.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service || true
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # pip's build warnings are noise on success; shown in full when the install fails.
  pip_log=$(mktemp)
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } \
      >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    rm -f "$pip_log"
    echo "install-deps: pip install failed" >&2
    exit 1
  fi
  rm -f "$pip_log"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# buf (protobuf lint) from the npm registry, kept inside the checkout.
BUF_VERSION=1.75.0
if ! command -v npm >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
fi
if command -v npm >/dev/null 2>&1; then
  if [ "$(.cache/node/node_modules/.bin/buf --version 2>/dev/null)" != "$BUF_VERSION" ]; then
    mkdir -p .cache/node
    npm install --silent --no-audit --no-fund --prefix .cache/node "@bufbuild/buf@$BUF_VERSION" >/dev/null
  fi
else
  echo "install-deps: npm not found; buf lint will not run" >&2
fi
echo "install-deps: ready (.venv)"
