#!/bin/sh
# Convert time next to a plain libguestfs copy of the same root filesystem
# (docs/performance.md).
#
#   tests/guest/bench-convert.sh IMAGE AGENT MODULES_DIR
#
# IMAGE is a test image from tests/guest/build-image.sh (root on partition
# 2 for the simple layout). The baseline launches one appliance with
# convert's settings (vCPUs, memory), creates an ext4 filesystem on a new
# qcow2 and copies the root with cp -a: what convert does minus LUKS,
# inspection, installation and the initrd. Both run in the same
# invocation, one after the other, with the same libguestfs environment
# (LIBGUESTFS_PATH, LIBGUESTFS_BACKEND_SETTINGS). Prints both wall times,
# the ratio and convert's per-phase milliseconds.
set -eu
IMAGE=${1:?usage: bench-convert.sh IMAGE AGENT MODULES_DIR}
AGENT=${2:?agent}
MODULES=${3:?modules dir}
ROOTPART=${ROOTPART:-2}
export LIBGUESTFS_BACKEND="${LIBGUESTFS_BACKEND:-direct}"
export LIBGUESTFS_BACKEND_SETTINGS="${LIBGUESTFS_BACKEND_SETTINGS-force_tcg}"
SNPGUARDCTL=${SNPGUARDCTL:-target/release/snpguardctl}
W=$(mktemp -d build/bench-convert.XXXXXX)
trap 'rm -rf "$W"' EXIT INT TERM

now() { date +%s.%N; }

# convert's appliance: up to 4 vCPUs, 2 GiB (image/appliance.rs).
cpus=$(nproc)
[ "$cpus" -le 4 ] || cpus=4
# The image's virtual size (the JSON form also lists the size of the
# file under it, first).
size=$(qemu-img info "$IMAGE" | sed -n 's/^virtual size: .*(\([0-9]*\) bytes)$/\1/p')
t0=$(now)
guestfish <<EOF
add-drive-ro $IMAGE
disk-create $W/base.qcow2 qcow2 $size
add $W/base.qcow2
set-smp $cpus
set-memsize 2048
run
part-disk /dev/sdb gpt
debug sh "i=\$(readlink -f /dev/disk/by-path/*-scsi-0:0:0:0-part$ROOTPART) && o=\$(readlink -f /dev/disk/by-path/*-scsi-0:0:1:0-part1) && mke2fs -q -t ext4 \$o && mkdir -p /run/i /run/o && mount -o ro \$i /run/i && mount \$o /run/o && cp -a /run/i/. /run/o/ && sync && umount /run/o /run/i"
EOF
t1=$(now)
rm -f "$W/base.qcow2"

head -c 32 /dev/urandom >"$W/ingestion.pub"
head -c 8192 /dev/zero >"$W/fw.fd"
printf '%s\n' '-----BEGIN CERTIFICATE-----' 'MA==' '-----END CERTIFICATE-----' >"$W/ca.pem"
t2=$(now)
"$SNPGUARDCTL" convert --in-image "$IMAGE" --out-image "$W/out.qcow2" \
	--out-staging "$W/staging" --firmware "$W/fw.fd" --server https://bench.test \
	--ca "$W/ca.pem" --ingestion-key "$W/ingestion.pub" --agent "$AGENT" \
	--modules-dir "$MODULES" --no-recovery-keyslot --yes --json >"$W/summary.json"
t3=$(now)
echo "plain libguestfs copy: $(echo "$t1 - $t0" | bc) s"
echo "snpguardctl convert:   $(echo "$t3 - $t2" | bc) s"
echo "ratio:                 $(echo "scale=2; ($t3 - $t2) / ($t1 - $t0)" | bc)"
sed -n 's/.*"timings_ms":\({[^}]*}\).*/convert phases (ms): \1/p' "$W/summary.json"
