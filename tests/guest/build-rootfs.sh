#!/usr/bin/env bash
# Builds a Debian 13 (trixie) guest root file system for the initrd boot
# test, the `convert` tests and the demo, and caches it; flavour `host` is
# the SnpGuard host `make test-host` boots (tests/host/run.sh).
#
#   tests/guest/build-rootfs.sh --flavour initramfs-tools|dracut|host --out DIR
#
# The guest: debootstrap minbase + linux-image-amd64, systemd-sysv, udev,
# kmod, e2fsprogs and the flavour's initrd generator (dracut with its
# network module: systemd-networkd, as no NetworkManager is installed),
# zstd for compressed initrds as both tools prefer.
# Deliberately no cryptsetup: the agent maps the volume itself.
# The host: initramfs-tools, what the snpguard packages depend on (dbus,
# polkitd, qemu-utils, libguestfs0) and what an operator's host has and
# the test uses (cockpit-ws, cockpit-bridge and cockpit-system, the
# shell the page opens in; man-db, bash-completion,
# curl, iproute2, systemd-resolved-free networking by systemd-networkd
# on DHCP), so that apt installs the packages without a network.
#
# Cache: build/guest-rootfs/<flavour>-<key>/, key = hash of this script and
# the flavour, so editing the script rebuilds. An entry is built in a
# temporary directory beside it and renamed into place only when complete,
# so an interrupted run never looks finished; a lock file serialises
# concurrent runs. A second run is instant.
#
# DIR receives (hard links into the cache when on the same file system):
#   rootfs.tar      the whole tree, numeric owners, xattrs (for the chroot
#                   build of an initrd, and for qcow2 images: docs/initrd.md)
#   vmlinuz         the guest's kernel
#   initrd.img      its initrd as the kernel package built it
#   kernel-release  its `uname -r`
#   packages.txt    the installed packages and versions
#
# Needs root (debootstrap, chroot) and deb.debian.org. SNPGUARD_BUILD_DIR
# overrides the repository's build/ directory.
set -euo pipefail

usage() {
    echo "usage: $0 --flavour initramfs-tools|dracut|host --out DIR" >&2
    exit 2
}

flavour=
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) [ $# -ge 2 ] || usage; flavour=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build-rootfs: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$out" ] || usage
case "$flavour" in
    initramfs-tools) tool_pkgs="initramfs-tools" ;;
    # dracut-network brings the network module; with systemd installed and
    # no NetworkManager, dracut picks systemd-networkd for it, which needs
    # ip from iproute2 (as every Debian cloud image has).
    dracut) tool_pkgs="dracut dracut-network iproute2" ;;
    host) tool_pkgs="initramfs-tools dbus polkitd qemu-utils libguestfs0 cockpit-ws cockpit-bridge"
        tool_pkgs+=" cockpit-system man-db bash-completion curl iproute2 ca-certificates" ;;
    *) usage ;;
esac

log() { printf 'build-rootfs: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root (debootstrap and chroot)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap is missing: run scripts/setup-deps.sh"; exit 1; }

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SNPGUARD_BUILD_DIR:-$top/build}
suite=trixie
mirror=http://deb.debian.org/debian
read -r -a packages <<<"linux-image-amd64 systemd-sysv udev kmod e2fsprogs zstd $tool_pkgs"

key=$( { cat "$0"; echo "$flavour"; } | sha256sum | cut -c1-16)
cache_root="$build/guest-rootfs"
entry="$cache_root/$flavour-$key"
products=(rootfs.tar vmlinuz initrd.img kernel-release packages.txt)

# Unmounts everything below $1 (deepest first).
umount_below() {
    local m
    awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

build_entry() {
    mkdir -p "$cache_root"
    local tmp
    tmp=$(mktemp -d "$cache_root/.partial-$flavour-XXXXXX")
    # shellcheck disable=SC2064 # expand $tmp now: it is local
    trap "umount_below '$tmp'; rm -rf '$tmp'" EXIT
    local root="$tmp/root"
    local started=$SECONDS

    log "debootstrap $suite (minbase) into $root"
    debootstrap --variant=minbase --components=main "$suite" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
        || { tail -n 30 "$tmp/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }

    # No daemons start inside the chroot; the kernel's postinst builds an
    # initrd, which needs /proc, /sys and /dev.
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --make-rslave "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --make-rslave "$root/dev"

    log "installing ${packages[*]}"
    chroot "$root" apt-get update -qq >"$tmp/apt.log" 2>&1 \
        || { tail -n 30 "$tmp/apt.log" >&2; log "apt-get update failed"; exit 1; }
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${packages[@]}" >>"$tmp/apt.log" 2>&1 \
        || { tail -n 30 "$tmp/apt.log" >&2; log "apt-get install failed"; exit 1; }
    chroot "$root" apt-get clean
    umount_below "$root"

    rm -f "$root/usr/sbin/policy-rc.d"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    # A fresh machine identity on first boot, not the builder's.
    : > "$root/etc/machine-id"
    if [ "$flavour" = host ]; then
        echo snpguard-host > "$root/etc/hostname"
        # QEMU's user network hands out an address by DHCP.
        printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' \
            > "$root/etc/systemd/network/80-snpguard-host.network"
        chroot "$root" systemctl enable --quiet systemd-networkd.service
    else
        echo snpguard-guest > "$root/etc/hostname"
    fi

    local kernel release
    kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)
    [ -n "$kernel" ] || { log "no kernel in $root/boot"; exit 1; }
    release=${kernel##*/vmlinuz-}
    cp "$kernel" "$tmp/vmlinuz"
    [ -f "$root/boot/initrd.img-$release" ] || { log "no initrd.img-$release in $root/boot"; exit 1; }
    cp "$root/boot/initrd.img-$release" "$tmp/initrd.img"
    echo "$release" > "$tmp/kernel-release"
    # shellcheck disable=SC2016 # dpkg-query's own format fields
    chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' > "$tmp/packages.txt"
    if [ "$flavour" != host ] && grep -q '^cryptsetup ' "$tmp/packages.txt"; then
        log "cryptsetup got installed; it must not be"; exit 1
    fi

    tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$root" -cf "$tmp/rootfs.tar" .
    rm -rf "$root" "$tmp"/*.log

    chmod 0755 "$tmp"
    mv -T "$tmp" "$entry"
    trap - EXIT
    log "built $entry in $((SECONDS - started)) s (kernel $release)"
}

# One builder per entry: a concurrent run waits, then finds it cached.
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$flavour-$key"
flock 9
if [ -d "$entry" ]; then
    log "cached: $entry"
else
    build_entry
fi
exec 9>&-

mkdir -p "$out"
for f in "${products[@]}"; do
    [ -f "$entry/$f" ] || { log "$entry/$f is missing: remove $entry and run again"; exit 1; }
    ln -f "$entry/$f" "$out/$f" 2>/dev/null || cp -f "$entry/$f" "$out/$f"
done
echo "$entry"
