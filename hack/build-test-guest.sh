#!/usr/bin/env bash
# Builds the tiny virt-agent test guest from Debian packages only:
#   vmlinuz      Debian's cloud kernel (from the package linux-image-cloud-amd64 depends on)
#   initrd.img   gzip'd cpio: busybox-static, hack/test-guest/{init,udhcpc.script,...}, and
#                only the kernel modules the guest needs
#   disk.qcow2   the same kernel+initrd on a BIOS-bootable MBR disk (FAT partition + SYSLINUX),
#                booting with "console=ttyS0 quiet token=disk"
# Usage: hack/build-test-guest.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${VIRT_AGENT_GUEST_DIR:-/var/cache/virt-agent/test-guest}.
# Rebuilds only when the stamp changes (this script and hack/test-guest/*, the kernel package
# version, the busybox version). Concurrent runs are serialized with flock; outputs are built
# in a temporary folder inside CACHE_DIR and renamed into place, the stamp last.
# Progress goes to stderr; the last line of stdout is CACHE_DIR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FILES="$HERE/test-guest"
CACHE_DIR=${1:-${VIRT_AGENT_GUEST_DIR:-/var/cache/virt-agent/test-guest}}
KERNEL_META=linux-image-cloud-amd64
# Modules the guest loads (their dependencies are added): virtio PCI devices (NIC, disk, SCSI,
# balloon for memory stats), CD-ROM/disk over IDE (pc machine; the cloud kernel has no AHCI,
# so a q35 SATA CD-ROM is not visible) or virtio-scsi, ISO9660 for the NoCloud seed, and the
# ACPI power button with evdev so that acpid sees it.
# Two lists: init loads the second while DHCP runs.
MODULES_EARLY=(virtio_pci virtio_net virtio_blk virtio_balloon button evdev)
MODULES_LATE=(virtio_scsi ata_piix sr_mod sd_mod isofs)
DISK_MIB=64
PART_START=2048 # sectors: the partition starts at 1 MiB
BOOT_APPEND="console=ttyS0 quiet token=disk"

log() { echo "build-test-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- Debian packages --------------------------------------------------------------------
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get update -q >&2
    apt_updated=1
  fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
known() { apt-cache show --no-all-versions "$1" >/dev/null 2>&1; }

# Installs the packages that are missing; refreshes the package lists only when one is unknown
# or the install fails (stale lists point at versions the mirror no longer has).
ensure_packages() {
  local pkg missing=()
  for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  for pkg in "${missing[@]}"; do known "$pkg" || apt_update_once; done
  log "installing ${missing[*]}"
  local install=(apt-get install -y -q --no-install-recommends "${missing[@]}")
  DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2 ||
    { apt_update_once && DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2; }
}

ensure_packages busybox-static cpio gzip
# The disk image: SYSLINUX for FAT (installs via mtools, no loop mount), mkfs.fat, sfdisk.
ensure_packages syslinux syslinux-common mtools dosfstools fdisk qemu-utils

# The current kernel package: the one the meta package depends on, with its exact version,
# e.g. "Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)". It is downloaded, never
# installed. One apt-cache call only: each takes most of a second here.
meta_depends() {
  apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null | sed -n 's/^Depends: //p' | head -n 1
}
kdep=$(meta_depends)
[ -n "$kdep" ] || { apt_update_once; kdep=$(meta_depends); }
KERNEL_PKG=$(sed -n 's/^\(linux-image-[^ ,|]*\).*/\1/p' <<<"$kdep")
KERNEL_VER=$(sed -n 's/^linux-image-[^ ,|]* (= \([^)]*\)).*/\1/p' <<<"$kdep")
[ -n "$KERNEL_PKG" ] && [ -n "$KERNEL_VER" ] ||
  die "cannot tell which kernel $KERNEL_META depends on (Depends: $kdep)"
BUSYBOX_VER=$(dpkg-query -W -f='${Version}' busybox-static)

STAMP="inputs=$(cat "$SELF" "$FILES"/* | sha256sum | cut -c1-32)
kernel=$KERNEL_PKG $KERNEL_VER
busybox=$BUSYBOX_VER"
OUTPUTS=(vmlinuz initrd.img disk.qcow2)

up_to_date() {
  local f
  for f in "${OUTPUTS[@]}"; do [ -s "$CACHE_DIR/$f" ] || return 1; done
  [ "$(cat "$CACHE_DIR/stamp" 2>/dev/null)" = "$STAMP" ]
}

# QEMU runs as libvirt-qemu: the folders must be world-searchable whatever our umask is.
(umask 022 && mkdir -p "$CACHE_DIR")
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)
if ! up_to_date; then
  exec 9>"$CACHE_DIR/.lock"
  flock 9 # a concurrent build finishes first; then the stamp is usually current
fi
if up_to_date; then
  log "up to date ($KERNEL_PKG $KERNEL_VER, busybox $BUSYBOX_VER)"
  echo "$CACHE_DIR"
  exit 0
fi

# Holding the lock, any earlier build folder is a leftover of a killed run.
rm -rf "$CACHE_DIR"/.build.*
TMP=$(mktemp -d "$CACHE_DIR/.build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
log "building in $TMP ($KERNEL_PKG $KERNEL_VER, busybox $BUSYBOX_VER)"

# ---- kernel -----------------------------------------------------------------------------
# Sandbox user root: _apt cannot write into our private temporary folder.
download() {
  (cd "$TMP" && apt-get download -q -o APT::Sandbox::User=root "$KERNEL_PKG=$KERNEL_VER" >&2)
}
download || { apt_update_once && download; }
dpkg-deb -x "$TMP/${KERNEL_PKG}_"*.deb "$TMP/kpkg"
KREL=${KERNEL_PKG#linux-image-}
MODDIR="$TMP/kpkg/lib/modules/$KREL"
[ -f "$TMP/kpkg/boot/vmlinuz-$KREL" ] && [ -d "$MODDIR" ] || die "unexpected layout in $KERNEL_PKG"
cp "$TMP/kpkg/boot/vmlinuz-$KREL" "$TMP/vmlinuz"

# ---- initramfs root ---------------------------------------------------------------------
ROOT="$TMP/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc/acpi/PWRF,proc,sys,dev,run,tmp,mnt,root}
mkdir -p "$ROOT"/{var/www/cgi-bin,var/log,lib/modules}
chmod 1777 "$ROOT/tmp"
cp /bin/busybox "$ROOT/bin/busybox"
# Same as "busybox --install -s", without running anything inside the new root.
/bin/busybox --list-full | while read -r applet; do
  [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done
install -m 0755 "$FILES/init" "$ROOT/init"
install -m 0755 "$FILES/udhcpc.script" "$ROOT/etc/udhcpc.script"
install -m 0755 "$FILES/index.cgi" "$ROOT/var/www/cgi-bin/index.cgi"
install -m 0755 "$FILES/poweroff" "$ROOT/etc/acpi/PWRF/00000080"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
printf 'hosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
# The kernel opens /dev/console for init before devtmpfs is mounted (mknod needs root).
if [ "$(id -u)" = 0 ]; then mknod -m 600 "$ROOT/dev/console" c 5 1; fi

# ---- kernel modules ---------------------------------------------------------------------
declare -A MODPATH=() BUILTIN=() SEEN=()
while read -r p; do
  n=${p##*/}; n=${n%%.ko*}; MODPATH[${n//-/_}]=$p
done < <(cd "$MODDIR" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
while read -r p; do
  n=${p##*/}; n=${n%%.ko*}; BUILTIN[${n//-/_}]=1
done <"$MODDIR/modules.builtin"
LOAD_ORDER=()

# Copies module $1 (uncompressed: busybox insmod reads plain .ko only) after its dependencies,
# taken from the module's own "depends=" modinfo field; builtin ones are skipped.
add_module() {
  local name=${1//-/_} src dst deps dep
  [ -n "${SEEN[$name]:-}" ] && return 0
  SEEN[$name]=1
  [ -n "${BUILTIN[$name]:-}" ] && return 0
  src=${MODPATH[$name]:-}
  [ -n "$src" ] || die "module $name is neither builtin nor in $KERNEL_PKG"
  dst="$ROOT/lib/modules/$name.ko"
  case $src in
    *.xz) xz -dc "$MODDIR/$src" >"$dst" ;;
    *.zst) ensure_packages zstd && zstd -qdc "$MODDIR/$src" >"$dst" ;;
    *.gz) gzip -dc "$MODDIR/$src" >"$dst" ;;
    *) cp "$MODDIR/$src" "$dst" ;;
  esac
  deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | head -n 1)
  for dep in ${deps//,/ }; do add_module "$dep"; done
  LOAD_ORDER+=("$name")
}
for m in "${MODULES_EARLY[@]}"; do add_module "$m"; done
printf '%s\n' "${LOAD_ORDER[@]}" >"$ROOT/lib/modules/early.list"
log "modules, early: ${LOAD_ORDER[*]}"
LOAD_ORDER=()
for m in "${MODULES_LATE[@]}"; do add_module "$m"; done
printf '%s\n' "${LOAD_ORDER[@]}" >"$ROOT/lib/modules/late.list"
log "modules, late: ${LOAD_ORDER[*]}"

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z |
  cpio --quiet --null -o -H newc -R 0:0) | gzip -9 -n >"$TMP/initrd.img"
log "initrd.img: $(du -h "$TMP/initrd.img" | cut -f1)"

# ---- disk.qcow2 -------------------------------------------------------------------------
# MBR + one bootable FAT partition holding SYSLINUX, the kernel and the initrd. The partition
# is built as its own file (mkfs.fat, syslinux and mtools work on files: no loop device), then
# copied into the disk image at its offset.
part_sectors=$((DISK_MIB * 2048 - PART_START))
cat >"$TMP/syslinux.cfg" <<EOF
DEFAULT testguest
PROMPT 0
TIMEOUT 0
LABEL testguest
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $BOOT_APPEND
EOF
# -h: a partitioned FAT volume records its offset as "hidden sectors" (SYSLINUX itself gets
# the offset from mbr.bin too).
mkfs.fat -C -F 16 -h "$PART_START" -n TESTGUEST "$TMP/part.img" $((part_sectors / 2)) >/dev/null
syslinux --install "$TMP/part.img"
mcopy -i "$TMP/part.img" "$TMP/vmlinuz" "$TMP/initrd.img" "$TMP/syslinux.cfg" ::/
truncate -s "${DISK_MIB}M" "$TMP/disk.raw"
echo "start=$PART_START, size=$part_sectors, type=e, bootable" | sfdisk -q --label dos "$TMP/disk.raw"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$TMP/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$TMP/part.img" of="$TMP/disk.raw" bs=512 seek="$PART_START" conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 "$TMP/disk.raw" "$TMP/disk.qcow2"
log "disk.qcow2: $(du -h "$TMP/disk.qcow2" | cut -f1)"

# ---- publish ----------------------------------------------------------------------------
# Each file is renamed into place atomically; the stamp goes first (removed) and last (written)
# so that a half-published set is never taken as current.
rm -f "$CACHE_DIR/stamp"
for f in "${OUTPUTS[@]}"; do
  chmod 0644 "$TMP/$f"
  mv -f "$TMP/$f" "$CACHE_DIR/$f"
done
printf '%s\n' "$STAMP" >"$TMP/stamp"
chmod 0644 "$TMP/stamp"
mv -f "$TMP/stamp" "$CACHE_DIR/stamp"
log "built $KERNEL_PKG $KERNEL_VER"
echo "$CACHE_DIR"
