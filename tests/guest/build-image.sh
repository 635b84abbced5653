#!/usr/bin/env bash
# Builds a small Debian-like qcow2 from a root filesystem directory, for the
# convert/embed tests. Generated, never downloaded.
#
#   tests/guest/build-image.sh [--marker] LAYOUT [ROOTFS]
#
# LAYOUT is one of
#   simple  GPT: BIOS boot partition + root (ext4)
#   boot    GPT: BIOS boot + /boot (ext4) + root (ext4)
#   esp     GPT: ESP (vfat, mounted at /boot/efi) + root (ext4)
#   split   GPT: BIOS boot + /boot (ext4, Ubuntu's layout) + root (ext4) +
#           /var (ext4) + /home (ext4) + swap: every kind of partition
#           convert encrypts, moves or drops
# ROOTFS is a root filesystem directory or tar (the rootfs.tar of
# tests/guest/build-rootfs.sh: a debootstrapped Debian 13 with a kernel and
# initramfs-tools or dracut, numeric owners and xattrs); default
# $SNPGUARD_TEST_ROOTFS.
#
# The image is cached as build/guest/image-LAYOUT-<hash of ROOTFS's path>.qcow2
# and rebuilt only when it is older than this script or ROOTFS. Prints the
# image's path on stdout. Needs root (to read every file of the rootfs and
# keep owners), mke2fs with -d, sgdisk, mkfs.vfat and mcopy, qemu-img.
#
# On top of the rootfs, the root filesystem gets /srv/snpguard-test: files
# with user and trusted xattrs, POSIX ACLs (access and default), hard links,
# a setuid file owned by 1234:5678, a sparse file, a fifo, a device node and
# a symlink, so a copy that loses any of these is caught.
#
# --marker (the demo and the end-to-end tests): the guest also gets a random
# token in /etc/snpguard-demo/token and an enabled systemd unit that, once
# multi-user.target is reached, prints where /, /var and /home are mounted
# from and how many swap areas are active (`SNPGUARD-DEMO-MOUNTS /=… /var=…
# /home=… swaps=N`), then `SNPGUARD-DEMO-BOOTED <token>` on a
# line of its own on the serial console (a getty may have left terminal
# queries on the current one) and powers the machine off. The token is also written
# beside the image (image-LAYOUT-marker-<hash>.token) for the caller to
# compare: the line proves that the booted root is this image's. Such
# images are cached apart from the plain ones.
#
# Marker images also get a unit for the end-to-end test of a guest that
# writes its own next launch, which does nothing unless the host sets the
# QEMU fw_cfg item opt/org.snpguard/test-next-launch (a flag, never a
# script: the host chooses whether it runs, not what). Before the marker,
# it plays a kernel update: the running kernel's initrd rewritten (one NUL
# appended, which the kernel's initramfs reader skips as padding, standing
# for update-initramfs) and the kernel package's postinst hook run, which
# submits the renewal and starts snpguard-agent install-launch; it then
# waits for that service (the host approves meanwhile), prints its journal
# and `SNPGUARD-TEST-NEXT-LAUNCH <unit> done` on the serial console.
set -eu

MARKER=
if [ "${1:-}" = --marker ]; then
	MARKER=-marker
	shift
fi
LAYOUT=${1:?usage: build-image.sh [--marker] simple|boot|esp|split [ROOTFS]}
ROOTFS=${2:-${SNPGUARD_TEST_ROOTFS:?set SNPGUARD_TEST_ROOTFS to a rootfs dir or tar (tests/guest/build-rootfs.sh)}}
case $LAYOUT in simple|boot|esp|split) ;; *) echo "build-image.sh: unknown layout $LAYOUT" >&2; exit 2 ;; esac
if [ -d "$ROOTFS" ]; then
	{ [ -d "$ROOTFS/boot" ] && [ -d "$ROOTFS/etc" ]; } || {
		echo "build-image.sh: $ROOTFS is not a root filesystem" >&2
		exit 1
	}
	STAMP=$ROOTFS/boot
elif [ -f "$ROOTFS" ]; then
	STAMP=$ROOTFS
else
	echo "build-image.sh: $ROOTFS is missing; run tests/guest/build-rootfs.sh" >&2
	exit 1
fi
OUTDIR=${SNPGUARD_TEST_IMAGES:-build/guest}
KEY=$(realpath "$ROOTFS" | sha256sum | cut -c1-8)
OUT=$OUTDIR/image-$LAYOUT$MARKER-$KEY.qcow2
TOKEN_FILE=${OUT%.qcow2}.token
mkdir -p "$OUTDIR"

if [ -f "$OUT" ] && [ "$OUT" -nt "$0" ] && [ "$OUT" -nt "$STAMP" ] &&
	{ [ -z "$MARKER" ] || [ -s "$TOKEN_FILE" ]; }; then
	echo "$OUT"
	exit 0
fi

WORK=$(mktemp -d "$OUTDIR/.image-$LAYOUT.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

ROOT_MIB=1536
BOOT_MIB=256
ESP_MIB=64
HOME_MIB=64
SWAP_MIB=64
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
BOOT_UUID=$(cat /proc/sys/kernel/random/uuid)
ESP_ID=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ' | tr a-f A-F)
ESP_UUID="$(echo "$ESP_ID" | cut -c1-4)-$(echo "$ESP_ID" | cut -c5-8)"
VAR_UUID=$(cat /proc/sys/kernel/random/uuid)
HOME_UUID=$(cat /proc/sys/kernel/random/uuid)
SWAP_UUID=$(cat /proc/sys/kernel/random/uuid)

# The root tree: a copy of the rootfs plus the test files.
TREE=$WORK/tree
if [ -d "$ROOTFS" ]; then
	cp -a "$ROOTFS" "$TREE"
else
	mkdir "$TREE"
	tar --numeric-owner --xattrs --xattrs-include='*' --acls -xpf "$ROOTFS" -C "$TREE"
fi
T=$TREE/srv/snpguard-test
mkdir -p "$T/acl-dir" "$T/sticky"
chmod 1777 "$T/sticky"
echo hello >"$T/xattr-file"
setfattr -n user.snpguard -v hello "$T/xattr-file"
setfattr -n trusted.snpguard -v 0xdeadbeef "$T/xattr-file"
echo acl >"$T/acl-file"
setfacl -m u:1234:rw,g:5678:r "$T/acl-file"
setfacl -d -m u:1234:rwx "$T/acl-dir"
echo linked >"$T/hardlink-a"
ln "$T/hardlink-a" "$T/hardlink-b"
ln "$T/hardlink-a" "$T/acl-dir/hardlink-c"
echo owned >"$T/setuid"
chown 1234:5678 "$T/setuid"
chmod 4750 "$T/setuid"
truncate -s 64M "$T/sparse"
echo tail >>"$T/sparse"
mkfifo "$T/fifo"
mknod "$T/null" c 1 3
ln -s ../snpguard-test/xattr-file "$T/symlink"
touch -h -d 2001-02-03T04:05:06Z "$T/symlink" "$T/xattr-file"

if [ -n "$MARKER" ]; then
	TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
	mkdir -p "$TREE/etc/snpguard-demo"
	echo "$TOKEN" >"$TREE/etc/snpguard-demo/token"
	UNIT=snpguard-demo-marker.service
	cat >"$TREE/usr/local/sbin/snpguard-demo-marker" <<'EOF_SCRIPT'
#!/bin/sh
# On a line of its own: a getty may have left terminal queries on the
# current one.
src() { findmnt -n -o SOURCE -M "$1" || true; }
swaps=$(($(wc -l </proc/swaps) - 1))
printf '\nSNPGUARD-DEMO-MOUNTS /=%s /var=%s /home=%s swaps=%s\n' \
	"$(src /)" "$(src /var)" "$(src /home)" "$swaps" >/dev/ttyS0
printf '\nSNPGUARD-DEMO-BOOTED %s\n' "$(cat /etc/snpguard-demo/token)" >/dev/ttyS0
EOF_SCRIPT
	chmod 0755 "$TREE/usr/local/sbin/snpguard-demo-marker"
	cat >"$TREE/etc/systemd/system/$UNIT" <<'EOF_UNIT'
[Unit]
Description=SnpGuard demo: report the booted root on the serial console and power off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/snpguard-demo-marker
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
EOF_UNIT
	mkdir -p "$TREE/etc/systemd/system/multi-user.target.wants"
	ln -sf "../$UNIT" "$TREE/etc/systemd/system/multi-user.target.wants/$UNIT"

	TEST_UNIT=snpguard-test-next-launch.service
	cat >"$TREE/usr/local/sbin/snpguard-test-next-launch" <<'EOF_SCRIPT'
#!/bin/sh
# End-to-end test only; see tests/guest/build-image.sh.
modprobe qemu_fw_cfg 2>/dev/null || true
[ -e /sys/firmware/qemu_fw_cfg/by_name/opt/org.snpguard/test-next-launch/raw ] || exit 0
v=$(uname -r)
log=/run/snpguard-test-hook.log
printf '\0' >>"/boot/initrd.img-$v"
SNPGUARD_INSTALL_POLL=2 DEB_MAINT_PARAMS="configure $v" \
	/etc/kernel/postinst.d/zz-snpguard-renew "$v" "/boot/vmlinuz-$v" >"$log" 2>&1
sed 's/^/SNPGUARD-TEST-HOOK /' "$log" >/dev/ttyS0
unit=$(sed -n 's/.*\(snpguard-install-launch-[0-9]*\)\.service writes.*/\1/p' "$log")
[ -n "$unit" ] || { printf '\nSNPGUARD-TEST-NEXT-LAUNCH none started\n' >/dev/ttyS0; exit 0; }
i=0
while systemctl is-active --quiet "$unit" && [ "$i" -lt 600 ]; do
	sleep 2
	i=$((i + 1))
done
journalctl -b -o cat -u "$unit" | sed 's/^/SNPGUARD-TEST-INSTALL /' >/dev/ttyS0
printf '\nSNPGUARD-TEST-NEXT-LAUNCH %s done\n' "$unit" >/dev/ttyS0
EOF_SCRIPT
	chmod 0755 "$TREE/usr/local/sbin/snpguard-test-next-launch"
	cat >"$TREE/etc/systemd/system/$TEST_UNIT" <<EOF_UNIT
[Unit]
Description=SnpGuard end-to-end test: a kernel update writes the next launch (host flag only)
After=multi-user.target
Before=$UNIT

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/snpguard-test-next-launch
TimeoutStartSec=1500

[Install]
WantedBy=multi-user.target
EOF_UNIT
	ln -sf "../$TEST_UNIT" "$TREE/etc/systemd/system/multi-user.target.wants/$TEST_UNIT"
fi

FSTAB="UUID=$ROOT_UUID / ext4 errors=remount-ro 0 1"
# Moves the tree's $1 to its own filesystem's tree $WORK/$2; the root keeps
# the empty mount point.
move_out() {
	mkdir "$WORK/$2"
	(cd "$TREE$1" && tar --xattrs --xattrs-include='*' --acls -cf - .) |
		(cd "$WORK/$2" && tar --numeric-owner --xattrs --xattrs-include='*' --acls -xpf -)
	find "$TREE$1" -mindepth 1 -delete
}
case $LAYOUT in
boot)
	FSTAB="$FSTAB
UUID=$BOOT_UUID /boot ext4 defaults 0 2"
	move_out /boot boot
	;;
split)
	FSTAB="$FSTAB
UUID=$BOOT_UUID /boot ext4 defaults 0 2
UUID=$VAR_UUID /var ext4 defaults,nodev 0 2
UUID=$HOME_UUID /home ext4 defaults,nodev,nosuid 0 2
UUID=$SWAP_UUID none swap sw 0 0"
	move_out /boot boot
	move_out /var var
	mkdir -p "$TREE/home"
	move_out /home home
	echo "snpguard test file on /home" >"$WORK/home/snpguard-test-home"
	echo "snpguard test file on /var" >"$WORK/var/snpguard-test-var"
	# Room for the tree, the regenerated initrd's work files and the
	# journal of a booted guest.
	VAR_MIB=$(($(du -sm "$WORK/var" | cut -f1) * 2 + 256))
	;;
esp)
	FSTAB="$FSTAB
UUID=$ESP_UUID /boot/efi vfat umask=0077 0 1"
	mkdir -p "$TREE/boot/efi"
	;;
esac
printf '%s\n' "$FSTAB" >"$TREE/etc/fstab"
echo "snpguard-test-$LAYOUT" >"$TREE/etc/hostname"

mke2fs -q -t ext4 -L rootfs -U "$ROOT_UUID" -d "$TREE" "$WORK/root.img" "${ROOT_MIB}M" >&2
rm -rf "$TREE"

# Partition table. Sizes in MiB; 1 MiB alignment; the backup GPT needs the
# last MiB.
DISK=$WORK/disk.raw
case $LAYOUT in
simple) TOTAL=$((1 + 1 + ROOT_MIB + 1)) ;;
boot) TOTAL=$((1 + 1 + BOOT_MIB + ROOT_MIB + 1)) ;;
esp) TOTAL=$((1 + ESP_MIB + ROOT_MIB + 1)) ;;
split) TOTAL=$((1 + 1 + BOOT_MIB + ROOT_MIB + VAR_MIB + HOME_MIB + SWAP_MIB + 1)) ;;
esac
truncate -s "${TOTAL}M" "$DISK"
# Sector number of a MiB offset (sgdisk ignores unit suffixes on starts).
mib() { echo $(($1 * 2048)); }
gpt() {
	d=$1
	shift
	sgdisk -o "$@" "$d" >/dev/null
	sgdisk -v "$d" | grep -q 'No problems found' || {
		echo "build-image.sh: sgdisk did not write a valid GPT" >&2
		exit 1
	}
}
case $LAYOUT in
simple)
	gpt "$DISK" -n 1:"$(mib 1)":+1M -t 1:EF02 -c 1:bios \
		-n 2:"$(mib 2)":+${ROOT_MIB}M -t 2:8304 -c 2:root
	ROOT_AT=2
	;;
boot)
	mke2fs -q -t ext4 -L boot -U "$BOOT_UUID" -d "$WORK/boot" "$WORK/boot.img" "${BOOT_MIB}M" >&2
	gpt "$DISK" -n 1:"$(mib 1)":+1M -t 1:EF02 -c 1:bios \
		-n 2:"$(mib 2)":+${BOOT_MIB}M -t 2:EA00 -c 2:boot \
		-n 3:"$(mib $((2 + BOOT_MIB)))":+${ROOT_MIB}M -t 3:8304 -c 3:root
	dd if="$WORK/boot.img" of="$DISK" bs=1M seek=2 conv=notrunc,sparse status=none
	ROOT_AT=$((2 + BOOT_MIB))
	;;
split)
	mke2fs -q -t ext4 -L boot -U "$BOOT_UUID" -d "$WORK/boot" "$WORK/boot.img" "${BOOT_MIB}M" >&2
	mke2fs -q -t ext4 -L var -U "$VAR_UUID" -d "$WORK/var" "$WORK/var.img" "${VAR_MIB}M" >&2
	mke2fs -q -t ext4 -L home -U "$HOME_UUID" -d "$WORK/home" "$WORK/home.img" "${HOME_MIB}M" >&2
	truncate -s "${SWAP_MIB}M" "$WORK/swap.img"
	mkswap -q -U "$SWAP_UUID" "$WORK/swap.img" >/dev/null
	VAR_AT=$((2 + BOOT_MIB + ROOT_MIB))
	HOME_AT=$((VAR_AT + VAR_MIB))
	SWAP_AT=$((HOME_AT + HOME_MIB))
	gpt "$DISK" -n 1:"$(mib 1)":+1M -t 1:EF02 -c 1:bios \
		-n 2:"$(mib 2)":+${BOOT_MIB}M -t 2:EA00 -c 2:boot \
		-n 3:"$(mib $((2 + BOOT_MIB)))":+${ROOT_MIB}M -t 3:8304 -c 3:root \
		-n 4:"$(mib "$VAR_AT")":+"${VAR_MIB}"M -t 4:8310 -c 4:var \
		-n 5:"$(mib "$HOME_AT")":+${HOME_MIB}M -t 5:8302 -c 5:home \
		-n 6:"$(mib "$SWAP_AT")":+${SWAP_MIB}M -t 6:8200 -c 6:swap
	dd if="$WORK/boot.img" of="$DISK" bs=1M seek=2 conv=notrunc,sparse status=none
	dd if="$WORK/var.img" of="$DISK" bs=1M seek="$VAR_AT" conv=notrunc,sparse status=none
	dd if="$WORK/home.img" of="$DISK" bs=1M seek="$HOME_AT" conv=notrunc,sparse status=none
	dd if="$WORK/swap.img" of="$DISK" bs=1M seek="$SWAP_AT" conv=notrunc status=none
	rm -rf "$WORK/var.img" "$WORK/home.img" "$WORK/swap.img" "${WORK:?}/var" "${WORK:?}/home" "${WORK:?}/boot"
	ROOT_AT=$((2 + BOOT_MIB))
	;;
esp)
	truncate -s "${ESP_MIB}M" "$WORK/esp.img"
	mkfs.vfat -n ESP -i "$ESP_ID" "$WORK/esp.img" >/dev/null
	mkdir -p "$WORK/efi/EFI/debian"
	echo "snpguard test ESP" >"$WORK/efi/EFI/debian/README"
	mcopy -s -i "$WORK/esp.img" "$WORK/efi/EFI" ::/
	gpt "$DISK" -n 1:"$(mib 1)":+${ESP_MIB}M -t 1:EF00 -c 1:esp \
		-n 2:"$(mib $((1 + ESP_MIB)))":+${ROOT_MIB}M -t 2:8304 -c 2:root
	dd if="$WORK/esp.img" of="$DISK" bs=1M seek=1 conv=notrunc status=none
	ROOT_AT=$((1 + ESP_MIB))
	;;
esac
dd if="$WORK/root.img" of="$DISK" bs=1M seek="$ROOT_AT" conv=notrunc,sparse status=none
rm -f "$WORK/root.img" "$WORK/boot.img" "$WORK/esp.img"

qemu-img convert -q -f raw -O qcow2 "$DISK" "$WORK/image.qcow2"
if [ -n "$MARKER" ]; then
	echo "$TOKEN" >"$WORK/token"
	mv "$WORK/token" "$TOKEN_FILE"
fi
mv "$WORK/image.qcow2" "$OUT"
echo "$OUT"
