#!/usr/bin/env bash
# `make demo`: the whole job, end to end, on this machine and without
# SEV-SNP hardware. After two quick checks of the trust core (a real AMD
# report verified, a wrong measurement refused) it
#   1. builds a small Debian 13 guest with debootstrap (cached) and a qcow2
#      image of it whose systemd prints a marker once multi-user is reached;
#   2. starts snpguardd on a private D-Bus bus and HTTPS on 127.0.0.1, with
#      temporary state and the SIMULATED platform's root explicitly trusted
#      (snpguard-sim; a test polkit on that bus allows the demo's calls);
#   3. runs `snpguardctl convert`, `register` and `embed` as a user would;
#   4. boots the converted image under QEMU (TCG) from the bundle: the agent
#      in the initrd attests, gets the key, maps the root, the guest reaches
#      multi-user and prints the marker, which is checked here;
#   5. prints a transcript (steps, durations, the measurement, artifacts)
#      and stops every process it started.
#
# Environment: DEMO_INITRD=initramfs-tools|dracut (the guest's initrd
# generator), SNPGUARD_BUILD_DIR (caches; default build/), SNPGUARD_BIN_DIR
# (snpguardctl, snpguardd, snpguard-sim; default target/release),
# SNPGUARD_AGENT_SIM (the agent's simulator build, `make agent-sim`),
# SNPGUARD_TESTDATA (the AMD test data), DEMO_BOOT_TIMEOUT (seconds).
# Needs root (debootstrap, libguestfs) and what scripts/setup-deps.sh
# installs; `make demo` runs both.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${SNPGUARD_BUILD_DIR:-$top/build}
bin=${SNPGUARD_BIN_DIR:-$top/target/release}
agent=${SNPGUARD_AGENT_SIM:-$top/target/x86_64-unknown-linux-musl/agent-sim/snpguard-agent}
td=${SNPGUARD_TESTDATA:-$top/../shared/testdata/snp}
flavour=${DEMO_INITRD:-initramfs-tools}
boot_timeout=${DEMO_BOOT_TIMEOUT:-900}
ctl=$bin/snpguardctl
daemon=$bin/snpguardd
sim=$bin/snpguard-sim
demo=$build/demo
run=$demo/run
marker_prefix=SNPGUARD-DEMO-BOOTED

die() { echo "demo: $*" >&2; exit 1; }

case "$flavour" in initramfs-tools|dracut) ;; *) die "DEMO_INITRD=$flavour: use initramfs-tools or dracut" ;; esac
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, libguestfs); make demo as root"
for b in "$ctl" "$daemon" "$sim"; do
    [ -x "$b" ] || die "$b is missing; run 'make build' (or set SNPGUARD_BIN_DIR)"
done
[ -x "$agent" ] || die "$agent is missing; run 'make agent-sim'"
[ -d "$td/reports" ] || die "AMD test data not found at $td (set SNPGUARD_TESTDATA)"
for tool in dbus-daemon qemu-system-x86_64 qemu-img curl jq python3 libguestfs-make-fixed-appliance; do
    command -v "$tool" >/dev/null || die "$tool is missing; run scripts/setup-deps.sh (make deps)"
done

# Transcript: every step's name and duration.
steps=()
durations=()
current=
started=0
step() {
    finish_step
    current=$1
    started=$(date +%s%N)
    printf '\n== %s\n' "$current"
}
finish_step() {
    if [ -n "$current" ]; then
        steps+=("$current")
        durations+=("$(( ($(date +%s%N) - started) / 1000000 ))")
        current=
    fi
}
# Prints a command (on stderr, so that a caller may capture the output),
# then runs it: these are the user's commands.
show() {
    {
        printf '$'
        printf ' %q' "$@"
        printf '\n'
    } >&2
    "$@"
}
# Waits up to $1 seconds for the command to succeed.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
secs() { printf '%d.%01d s' "$(($1 / 1000))" "$((($1 % 1000) / 100))"; }

# Every process this script starts, stopped (by pid) on exit.
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

total_start=$(date +%s%N)
rm -rf "$run"
mkdir -p "$run"

step "trust core: a real AMD Milan report verified (VCEK -> ASK -> pinned ARK), a wrong measurement refused"
show "$ctl" report verify --report "$td/reports/milan-virtee/report.bin" \
    --vcek "$td/reports/milan-virtee/vcek.der" --allow-smt
wrong=$(printf '00%.0s' $(seq 48))
if "$ctl" report verify --report "$td/reports/milan-virtee/report.bin" \
    --vcek "$td/reports/milan-virtee/vcek.der" --allow-smt --measurement "$wrong" 2>"$run/refused.txt"; then
    die "a wrong measurement was accepted"
fi
echo "refused as expected: $(cat "$run/refused.txt")"

step "guest root file system: Debian 13 ($flavour) with debootstrap (cached in $build/guest-rootfs)"
rootfs=$build/guest/$flavour
export SNPGUARD_BUILD_DIR=$build
show "$top/tests/guest/build-rootfs.sh" --flavour "$flavour" --out "$rootfs"

step "guest image: a qcow2 of it whose systemd prints $marker_prefix <token> at multi-user (cached)"
export SNPGUARD_TEST_IMAGES=$demo/images
image=$(show "$top/tests/guest/build-image.sh" --marker simple "$rootfs/rootfs.tar" | tail -n 1)
token_file=${image%.qcow2}.token
[ -s "$token_file" ] || die "$token_file is missing"
token=$(cat "$token_file")
echo "image $image, token $token"

step "libguestfs appliance (fixed, built once in $build/guestfs-appliance)"
if [ ! -f "$build/guestfs-appliance/root" ]; then
    LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \
        show libguestfs-make-fixed-appliance "$build/guestfs-appliance"
else
    echo "cached"
fi
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
export LIBGUESTFS_PATH=$build/guestfs-appliance

step "host: private D-Bus bus, test polkit, simulated SEV-SNP platform, TLS, snpguardd"
# A system-type bus with dbus-daemon's system defaults and the project's
# policy; root may own polkit's name on it (the test authority below).
cat >"$run/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$run/bus</listen>
  <auth>EXTERNAL</auth>
  <include>$top/tests/dbus/private-system-bus.conf</include>
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <include>$top/dbus/org.snpguard.SnpGuard1.conf</include>
</busconfig>
EOF
dbus-daemon --config-file="$run/bus.conf" --print-address --nofork --nopidfile \
    >"$run/bus.address" 2>"$run/bus.log" &
pids+=($!)
wait_for 10 test -s "$run/bus.address" || die "dbus-daemon printed no address; $run/bus.log"
bus=$(head -n 1 "$run/bus.address")
echo "private bus: $bus"
"$sim" polkit --bus "$bus" >"$run/polkit.out" 2>"$run/polkit.log" &
pids+=($!)
wait_for 10 grep -q serving "$run/polkit.out" || die "the test polkit did not start; $run/polkit.log"
cat "$run/polkit.out"

show "$sim" init --product genoa --dir "$run/platform"
show "$top/scripts/generate-tls-certs.sh" --output "$run/tls" --ip 10.0.2.2 --ip 127.0.0.1 --days 2
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$run/conf"
cp "$run/platform/ark.pem" "$run/conf/sim-ark.pem"
cat >"$run/conf/snpguardd.toml" <<EOF
# make demo: HTTPS on loopback (QEMU guests reach it as 10.0.2.2), and the
# SIMULATED platform's root trusted next to AMD's (TEST ONLY).
listen = "127.0.0.1:$port"
tls_cert = "$run/tls/server.pem"
tls_key = "$run/tls/server.key"
[[test_roots]]
product = "genoa"
ark_path = "sim-ark.pem"
[kds]
enabled = false
EOF
cat "$run/conf/snpguardd.toml"
printf '$ %s\n' "$daemon --state-dir $run/state --bus $bus --config $run/conf/snpguardd.toml 2>$run/snpguardd.log &"
env -u NOTIFY_SOCKET -u CREDENTIALS_DIRECTORY "$daemon" --state-dir "$run/state" --bus "$bus" \
    --config "$run/conf/snpguardd.toml" </dev/null >/dev/null 2>"$run/snpguardd.log" &
daemon_pid=$!
pids+=("$daemon_pid")
ready() {
    kill -0 "$daemon_pid" || die "snpguardd exited; its log: $run/snpguardd.log"
    curl --silent --fail --cacert "$run/tls/ca.pem" -o "$run/ingestion-key.json" \
        "https://127.0.0.1:$port/v1/ingestion-key" \
        && "$ctl" --bus-address "$bus" records list
}
wait_for 60 ready || die "snpguardd is not ready after 60 s; its log: $run/snpguardd.log"
show curl --silent --fail --cacert "$run/tls/ca.pem" -o "$run/ingestion-key.json" \
    "https://127.0.0.1:$port/v1/ingestion-key"
cat "$run/ingestion-key.json"; echo

step "convert: LUKS2 root, the agent (simulator build) in the guest's $flavour initrd"
# The firmware: no OVMF AmdSev build is packaged anywhere, so random pages
# followed by the AmdSev footer (its SEV metadata is what is measured).
head -c 8192 /dev/urandom >"$run/OVMF.amdsev.fd"
cat "$td/measurement/ovmf_AmdSev_suffix.bin" >>"$run/OVMF.amdsev.fd"
show "$ctl" convert --in-image "$image" --out-image "$run/guest.qcow2" \
    --out-staging "$run/staging" --firmware "$run/OVMF.amdsev.fd" \
    --server "https://10.0.2.2:$port" --ca "$run/tls/ca.pem" \
    --ingestion-key "$run/ingestion-key.json" --agent "$agent" --modules-dir "$top" \
    --recovery-key-file "$run/recovery.key" --simulated-platform --yes

step "register: the daemon measures, signs the ID block, keeps the sealed VMK"
# --allow-test-root: the guest's reports come from the simulated platform,
# whose root this daemon trusts through [[test_roots]]; a production
# record never accepts such a report.
show "$ctl" --bus-address "$bus" register --name demo --vcpus 1 --vcpu-type EPYC-v4 \
    --allow-smt --allow-test-root --staging-dir "$run/staging" \
    --out-bundle "$run/launch-artifacts.tar.gz"
measurement=$("$ctl" --bus-address "$bus" records show demo --json | jq -r .measurement)

step "embed: the bundle into the image's LAUNCH_ARTIFACTS partition (slot A)"
show "$ctl" embed --image "$run/guest.qcow2" --in-bundle "$run/launch-artifacts.tar.gz"

step "boot: QEMU/TCG from the bundle; the agent attests to snpguardd at 10.0.2.2:$port"
mkdir "$run/bundle"
show tar -xzf "$run/launch-artifacts.tar.gz" -C "$run/bundle"
# What the PSP would measure and sign for this launch, handed to the
# agent's simulated report source through fw_cfg.
show "$sim" launch --dir "$run/platform" --bundle "$run/launch-artifacts.tar.gz" \
    --out "$run/sim-launch.json"
# On hardware this is scripts/launch-qemu-snp.sh (sev-snp-guest object, ID
# block, kernel hashes); here TCG with the simulated platform's blob.
qemu=(qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -nographic -no-reboot -monitor none
    -kernel "$run/bundle/kernel" -initrd "$run/bundle/initrd"
    -append "$(cat "$run/bundle/cmdline")"
    -drive "if=virtio,format=qcow2,file=$run/guest.qcow2"
    -netdev "user,id=net0" -device "virtio-net-pci,netdev=net0" -device virtio-rng-pci
    -fw_cfg "name=opt/org.snpguard/sim-launch,file=$run/sim-launch.json"
    -serial "file:$run/serial.log")
printf '$'
printf ' %q' "${qemu[@]}"
printf ' &\n'
"${qemu[@]}" </dev/null >"$run/qemu.log" 2>&1 &
qemu_pid=$!
pids+=("$qemu_pid")
deadline=$((SECONDS + boot_timeout))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        kill "$qemu_pid"
        die "the guest did not finish within $boot_timeout s; serial log: $run/serial.log"
    fi
    sleep 1
done
wait "$qemu_pid" || die "QEMU failed; $run/qemu.log"
# The agent's console lines (it also logs them to the kernel log).
grep -a '^snpguard:' "$run/serial.log" | tr -d '\r' || true
if grep -aq 'snpguard: FAILED:' "$run/serial.log"; then
    die "the agent was refused; serial log: $run/serial.log, daemon log: $run/snpguardd.log"
fi
booted=$(grep -ao "$marker_prefix [0-9a-f]*" "$run/serial.log" | tail -n 1 || true)
[ "$booted" = "$marker_prefix $token" ] \
    || die "no '$marker_prefix $token' on the serial console; see $run/serial.log"
echo "$booted  (the token written into the image before convert: the root was unlocked)"
finish_step

total=$(( ($(date +%s%N) - total_start) / 1000000 ))
printf '\n== transcript\n'
for i in "${!steps[@]}"; do
    printf '  %9s  %s\n' "$(secs "${durations[$i]}")" "${steps[$i]}"
done
printf '  %9s  total\n' "$(secs "$total")"
cat <<EOF

record       demo (measurement $measurement)
initrd       $flavour
guest image  $run/guest.qcow2 (converted, bundle embedded)
bundle       $run/launch-artifacts.tar.gz
serial log   $run/serial.log
daemon log   $run/snpguardd.log (state in $run/state, discarded by the next run)
EOF
