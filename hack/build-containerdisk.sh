#!/usr/bin/env bash
# Builds a containerdisk the way KubeVirt's are built (one layer holding the disk image at
# /disk/<name>, owned by 107:107 = qemu in KubeVirt's launcher), as an OCI layout with umoci,
# and optionally pushes it to a registry with skopeo.
#
# Usage: hack/build-containerdisk.sh [--disk FILE] [--out DIR] [--push docker://HOST/REPO:TAG]
#                                    [--insecure]
#   --disk      the disk image (qcow2 or raw); default: the test guest's disk.qcow2
#               (hack/build-test-guest.sh builds it)
#   --out       the OCI layout folder (tag "latest"); default:
#               ${VIRT_AGENT_CONTAINERDISK_DIR:-/var/cache/virt-agent/containerdisk}/<sha of disk>
#   --push      copy the image to this destination (skopeo syntax)
#   --insecure  push over plain HTTP without TLS verification (a test registry)
# The layout is rebuilt only when the disk or this script changed. Progress goes to stderr; the
# last line of stdout is the layout folder. Nothing here reaches the network except --push.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
DISK= OUT= PUSH= TLS_VERIFY=true
while [ $# -gt 0 ]; do
  case $1 in
    --disk) DISK=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --push) PUSH=$2; shift 2 ;;
    --insecure) TLS_VERIFY=false; shift ;;
    *) echo "build-containerdisk: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "build-containerdisk: $*" >&2; }
for tool in umoci skopeo sha256sum; do
  command -v "$tool" >/dev/null || { log "no $tool (install it: hack/install-deps.sh)"; exit 1; }
done
if [ -z "$DISK" ]; then
  DISK="$(bash "$HERE/build-test-guest.sh" | tail -n 1)/disk.qcow2"
fi
[ -f "$DISK" ] || { log "no disk image at $DISK"; exit 1; }

STAMP=$(cat "$SELF" "$DISK" | sha256sum | cut -c1-32)
if [ -z "$OUT" ]; then
  OUT="${VIRT_AGENT_CONTAINERDISK_DIR:-/var/cache/virt-agent/containerdisk}/$STAMP"
fi
if [ "$(cat "$OUT/stamp" 2>/dev/null)" != "$STAMP" ]; then
  log "building $OUT from $DISK"
  mkdir -p "$(dirname "$OUT")"
  TMP=$(mktemp -d "$(dirname "$OUT")/.build.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  umoci init --layout "$TMP/oci"
  umoci new --image "$TMP/oci:latest"
  cp "$DISK" "$TMP/disk-file"
  chown 107:107 "$TMP/disk-file"
  chmod 0440 "$TMP/disk-file"
  umoci insert --image "$TMP/oci:latest" "$TMP/disk-file" "/disk/$(basename "$DISK")"
  umoci config --image "$TMP/oci:latest" --architecture amd64 --os linux
  umoci gc --layout "$TMP/oci"
  echo "$STAMP" >"$TMP/oci/stamp"
  rm -rf "$OUT"
  mv "$TMP/oci" "$OUT"
  rm -rf "$TMP"
  trap - EXIT
fi

if [ -n "$PUSH" ]; then
  log "pushing to $PUSH"
  # A policy of our own: the host's /etc/containers/policy.json may be missing or strict.
  policy=$(mktemp)
  trap 'rm -f "$policy"' EXIT
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$policy"
  skopeo --policy "$policy" copy --quiet --dest-tls-verify="$TLS_VERIFY" "oci:$OUT:latest" "$PUSH" >&2
fi
echo "$OUT"
