#!/usr/bin/env bash
# `make test-host`: the Debian packages installed and used on a real
# host, a Debian 13 VM with systemd as PID 1, booted once under QEMU/TCG.
#
#   tests/host/run.sh DEBS ROOTFS OUT
#
# DEBS holds snpguard_*.deb and cockpit-snpguard_*.deb (make test-deb's
# build); ROOTFS is `build-rootfs.sh --flavour host`'s output (rootfs.tar,
# vmlinuz, initrd.img); OUT receives the serial log and the Cockpit
# screenshots. The VM's root disk is the cached root file system plus a
# unit that runs tests/host/checks.sh from a second, read-only disk
# labelled HOSTTEST (the packages, a higher-versioned rebuild of them for
# the upgrade, snpguard-sim, AMD's Genoa ARK and ASK from
# $SNPGUARD_TESTDATA, the OVMF AmdSev footer) and powers off. When the
# checks reach Cockpit, headless Chromium on this side logs in through
# cockpit.socket forwarded to a loopback port (tests/cockpit/host.mjs)
# and answers on a virtio serial port. Every check named in checks.sh
# must report ok.
#
# Needs root (the root disk keeps the image's owners), qemu-system-x86,
# e2fsprogs, node with tests/cockpit's modules (installed here when
# missing) and Chromium. SNPGUARD_SIM overrides target/debug/snpguard-sim.
set -euo pipefail

usage() {
    echo "usage: $0 DEBS ROOTFS OUT" >&2
    exit 2
}
[ $# -eq 3 ] || usage
top=$(cd "$(dirname "$0")/../.." && pwd)
debs=$(cd "$1" && pwd)
rootfs=$(cd "$2" && pwd)
mkdir -p "$3"
out=$(cd "$3" && pwd)
testdata=${SNPGUARD_TESTDATA:-$top/../shared/testdata/snp}
sim=${SNPGUARD_SIM:-$top/target/debug/snpguard-sim}
# The VM's whole run: booting, the checks (two daemon restarts wait for
# systemd's timers), Cockpit and the package operations, under TCG.
timeout_s=${HOST_TEST_TIMEOUT:-1500}

log() { printf 'test-host: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the VM's root disk keeps the image's owners)"
for f in rootfs.tar vmlinuz initrd.img; do
    [ -f "$rootfs/$f" ] || die "$rootfs/$f is missing: run make host-rootfs"
done
shopt -s nullglob
main_debs=("$debs"/snpguard_*.deb)
cockpit_debs=("$debs"/cockpit-snpguard_*.deb)
[ "${#main_debs[@]}" -eq 1 ] || die "$debs must hold one snpguard_*.deb: run make test-deb"
[ "${#cockpit_debs[@]}" -eq 1 ] \
    || die "$debs must hold one cockpit-snpguard_*.deb: run make test-deb"
[ -x "$sim" ] || die "$sim is missing: cargo build -p snpguard-sim (make unit builds it)"
for f in amd/genoa/ark.pem amd/genoa/ask.pem measurement/ovmf_AmdSev_suffix.bin; do
    [ -f "$testdata/$f" ] || die "$testdata/$f is missing: set SNPGUARD_TESTDATA to the AMD test data"
done
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing: run scripts/setup-deps.sh"
[ -d "$top/tests/cockpit/node_modules/playwright-core" ] || (cd "$top/tests/cockpit" && npm ci --no-audit --no-fund)

tmp=$(mktemp -d /var/tmp/snpguard-host.XXXXXX)
qemu_pid=
cleanup() {
    [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
started=$SECONDS

# The upgrade: the same packages at a higher version, as a newer build
# would be.
upgrade_version() { dpkg-deb -f "$1" Version; }
version=$(upgrade_version "${main_debs[0]}")+hosttest1
mkdir -p "$tmp/ht/debs" "$tmp/ht/upgrade"
cp "${main_debs[0]}" "${cockpit_debs[0]}" "$tmp/ht/debs/"
for deb in "${main_debs[0]}" "${cockpit_debs[0]}"; do
    dpkg-deb -R "$deb" "$tmp/repack"
    sed -i "s/^Version: .*/Version: $version/" "$tmp/repack/DEBIAN/control"
    dpkg-deb -b -Zgzip -z1 "$tmp/repack" "$tmp/ht/upgrade/" >/dev/null
    rm -rf "$tmp/repack"
done
echo "$version" >"$tmp/ht/upgrade/version"
cp "$top/tests/host/checks.sh" "$sim" "$testdata/measurement/ovmf_AmdSev_suffix.bin" "$tmp/ht/"
cp "$testdata/amd/genoa/ark.pem" "$tmp/ht/genoa-ark.pem"
cp "$testdata/amd/genoa/ask.pem" "$tmp/ht/genoa-ask.pem"
ht_mib=$(( $(du -sm "$tmp/ht" | cut -f1) + 64 ))
mkfs.ext4 -q -L HOSTTEST -d "$tmp/ht" "$tmp/hosttest.img" "${ht_mib}M" >/dev/null
rm -rf "$tmp/ht"

# The root disk: the image, and the unit that runs the checks once.
mkdir "$tmp/root"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$tmp/root" -xf "$rootfs/rootfs.tar"
cat >"$tmp/root/usr/local/sbin/snpguard-hosttest" <<'EOF'
#!/bin/sh
# make test-host: runs the checks from the HOSTTEST disk, then powers off.
mkdir -p /run/hosttest
if mount -o ro /dev/vdb /run/hosttest; then
    /bin/bash /run/hosttest/checks.sh
    echo "HOSTTEST exit $?" >/dev/ttyS0
else
    echo "HOSTTEST end mount-failed" >/dev/ttyS0
fi
systemctl poweroff
EOF
chmod 0755 "$tmp/root/usr/local/sbin/snpguard-hosttest"
cat >"$tmp/root/etc/systemd/system/snpguard-hosttest.service" <<'EOF'
[Unit]
Description=SnpGuard host test (tests/host/checks.sh)
After=network.target dbus.service systemd-user-sessions.service

[Service]
Type=exec
ExecStart=/usr/local/sbin/snpguard-hosttest
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/snpguard-hosttest.service \
    "$tmp/root/etc/systemd/system/multi-user.target.wants/snpguard-hosttest.service"
# The serial console is the checks' report: no login prompt on it.
ln -s /dev/null "$tmp/root/etc/systemd/system/serial-getty@ttyS0.service"
root_mib=$(( $(du -sm "$tmp/root" | cut -f1) + 1536 ))
mkfs.ext4 -q -L hostroot -d "$tmp/root" "$tmp/root.img" "${root_mib}M" >/dev/null
rm -rf "$tmp/root"
log "disks ready in $((SECONDS - started)) s (root ${root_mib} MiB, HOSTTEST ${ht_mib} MiB)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
serial=$out/serial.log
rm -f "$serial" "$out"/*.png
qemu=(qemu-system-x86_64 -accel tcg -m 3072 -smp 2 -nographic -no-reboot -monitor none
    -kernel "$rootfs/vmlinuz" -initrd "$rootfs/initrd.img"
    -append "console=ttyS0 root=/dev/vda rw loglevel=4 systemd.show_status=0"
    -drive "if=virtio,format=raw,file=$tmp/root.img"
    -drive "if=virtio,format=raw,readonly=on,file=$tmp/hosttest.img"
    -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:9090" -device "virtio-net-pci,netdev=net0"
    -device virtio-rng-pci
    -device virtio-serial-pci
    -chardev "socket,id=ctl,path=$tmp/ctl.sock,server=on,wait=off"
    -device "virtserialport,chardev=ctl,name=org.snpguard.hosttest"
    -serial "file:$serial")
"${qemu[@]}" </dev/null >"$out/qemu.log" 2>&1 &
qemu_pid=$!
log "VM started (Cockpit forwarded to 127.0.0.1:$port; serial log $serial)"

# answer TEXT: one line to the checks on the virtio serial port, the
# connection held until the cockpit check has reported (the checks poll
# the port) or 120 s have passed.
answer() {
    python3 - "$tmp/ctl.sock" "$1" "$serial" <<'EOF'
import re, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
deadline = time.monotonic() + 120
done = re.compile(rb"HOSTTEST (ok|FAIL) cockpit")
while time.monotonic() < deadline:
    with open(sys.argv[3], "rb") as f:
        if done.search(f.read()):
            break
    time.sleep(0.5)
s.close()
EOF
}

cockpit_done=
deadline=$((SECONDS + timeout_s))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        grep -ao 'HOSTTEST.*' "$serial" | tr -d '\r' >&2 || true
        die "the VM did not finish within $timeout_s s; serial log: $serial"
    fi
    if [ -z "$cockpit_done" ] && grep -aq 'HOSTTEST cockpit-ready' "$serial" 2>/dev/null; then
        cockpit_done=1
        log "Cockpit: headless Chromium against http://127.0.0.1:$port"
        if (cd "$top/tests/cockpit" && node host.mjs "http://127.0.0.1:$port" "$out") >"$out/cockpit.log" 2>&1; then
            answer ok || true
        else
            cat "$out/cockpit.log" >&2
            answer "failed: see $out/cockpit.log" || true
        fi
    fi
    sleep 2
done
wait "$qemu_pid" || die "QEMU failed: $out/qemu.log"
qemu_pid=

grep -ao 'HOSTTEST.*' "$serial" | tr -d '\r' >&2 || true
missing=()
while read -r name; do
    grep -aqE "HOSTTEST ok $name( |\$)" "$serial" || missing+=("$name")
done < <(sed -nE 's/^check ([a-z0-9-]+) .*/\1/p' "$top/tests/host/checks.sh")
[ "${#missing[@]}" -eq 0 ] || die "checks not passed: ${missing[*]} (serial log: $serial)"
grep -aq 'HOSTTEST end 0' "$serial" || die "the checks did not end cleanly (serial log: $serial)"
log "passed in $((SECONDS - started)) s; screenshots in $out"
