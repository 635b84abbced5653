#!/usr/bin/env bash
# `make install DESTDIR=…` lays out exactly the expected tree, with the
# expected modes, and refuses to install a partial tree when a source is
# missing. Binaries are stand-ins so the test needs no release build.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "install-tree: $*" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# shellcheck source=tests/lib/install-stand-ins.sh
. tests/lib/install-stand-ins.sh
bins="$scratch/bin"

# 1. The full tree, PREFIX=/usr.
dest="$scratch/root"
install_with_stand_ins "$scratch" "$dest"

expected=(
    "755 usr/bin/snpguardctl"
    "755 usr/libexec/snpguard/snpguardd"
    "755 usr/lib/snpguard/snpguard-agent"
    "755 usr/share/snpguard/kernel/postinst.d/zz-snpguard-renew"
    "644 usr/lib/systemd/system/snpguardd.service"
    "644 usr/lib/systemd/system/snpguardd.socket"
    "644 usr/lib/sysusers.d/snpguard.conf"
    "644 usr/lib/tmpfiles.d/snpguard.conf"
    "644 usr/share/dbus-1/system.d/org.snpguard.SnpGuard1.conf"
    "644 usr/share/dbus-1/system-services/org.snpguard.SnpGuard1.service"
    "644 usr/share/polkit-1/actions/org.snpguard.SnpGuard1.policy"
    "644 usr/share/polkit-1/rules.d/50-org.snpguard.SnpGuard1.rules"
    "755 usr/share/snpguard/initramfs-tools/hooks/snpguard"
    "755 usr/share/snpguard/initramfs-tools/scripts/local-top/snpguard"
    "755 usr/share/snpguard/dracut/90snpguard/module-setup.sh"
    "755 usr/share/snpguard/dracut/90snpguard/snpguard-unlock.sh"
    "644 usr/share/snpguard/dracut/90snpguard/55-snpguard-dm.rules"
)
for xml in dbus/interfaces/*.xml; do
    [ -e "$xml" ] || fail "no dbus/interfaces/*.xml in the repository"
    expected+=("644 usr/share/dbus-1/interfaces/$(basename "$xml")")
done
for page in man/*.1 man/*.5 man/*.8; do
    [ -e "$page" ] || fail "$page: no manual page in the repository"
    expected+=("644 usr/share/man/man${page##*.}/$(basename "$page")")
done
expected+=("644 usr/share/bash-completion/completions/snpguardctl")
for f in cockpit/manifest.json cockpit/*.html cockpit/*.js cockpit/*.css; do
    [ -e "$f" ] || fail "$f: no Cockpit page in the repository"
    expected+=("644 usr/share/cockpit/snpguard/$(basename "$f")")
done
want=$(printf '%s\n' "${expected[@]}" | sort -k2)
got=$(cd "$dest" && find . -type f -printf '%m %P\n' | sort -k2)
if [ "$want" != "$got" ]; then
    diff <(printf '%s\n' "$want") <(printf '%s\n' "$got") >&2 || true
    fail "installed tree differs from the expected one (< expected, > installed)"
fi
cmp -s agent/kernel-hooks/zz-snpguard-renew "$dest/usr/share/snpguard/kernel/postinst.d/zz-snpguard-renew" \
    || fail "zz-snpguard-renew differs from agent/kernel-hooks/"
for f in initramfs-tools/hooks/snpguard initramfs-tools/scripts/local-top/snpguard \
    dracut/90snpguard/module-setup.sh dracut/90snpguard/snpguard-unlock.sh \
    dracut/90snpguard/55-snpguard-dm.rules; do
    cmp -s "$f" "$dest/usr/share/snpguard/$f" || fail "$f differs from its installed copy"
done
cmp -s units/snpguardd.socket "$dest/usr/lib/systemd/system/snpguardd.socket" \
    || fail "snpguardd.socket differs from units/"
cmp -s units/snpguardd.service "$dest/usr/lib/systemd/system/snpguardd.service" \
    || fail "with PREFIX=/usr the service must be installed unchanged"
# D-Bus activation names the daemon where it was installed (it said
# /usr/bin/snpguardd once, where nothing is).
exec_line=$(sed -n 's/^Exec=//p' "$dest/usr/share/dbus-1/system-services/org.snpguard.SnpGuard1.service")
[ "$exec_line" = /usr/libexec/snpguard/snpguardd ] \
    || fail "D-Bus activation Exec=$exec_line, not the installed daemon"
[ -x "$dest$exec_line" ] || fail "D-Bus activation Exec=$exec_line is not installed"

for f in cockpit/*; do
    cmp -s "$f" "$dest/usr/share/cockpit/snpguard/$(basename "$f")" || fail "$f differs when installed"
done
# Every manual page renders without a groff warning (man-db runs preconv,
# hence -k), and the completion is bash that defines its function.
for page in "$dest"/usr/share/man/man*/*; do
    warnings=$(groff -k -man -Tutf8 -ww -z "$page" 2>&1) || fail "groff failed on $page"
    [ -z "$warnings" ] || fail "$(basename "$page"): $warnings"
done
bash -n "$dest/usr/share/bash-completion/completions/snpguardctl" || fail "the completion is not bash"
# shellcheck disable=SC1091 # generated, checked by bash -n above
( source "$dest/usr/share/bash-completion/completions/snpguardctl" && declare -F _snpguardctl >/dev/null ) \
    || fail "the bash completion defines no _snpguardctl"

# 2. Another prefix: the unit points at the binary where it was installed.
dest2="$scratch/local"
make -s install DESTDIR="$dest2" PREFIX=/usr/local TARGET_DIR="$bins" AGENT_BIN="$bins/snpguard-agent" >/dev/null
grep -qx 'ExecStart=/usr/local/libexec/snpguard/snpguardd' \
    "$dest2/usr/local/lib/systemd/system/snpguardd.service" \
    || fail "PREFIX=/usr/local did not rewrite ExecStart="
[ -x "$dest2/usr/local/libexec/snpguard/snpguardd" ] || fail "PREFIX=/usr/local binary missing"
grep -qx 'Exec=/usr/local/libexec/snpguard/snpguardd' \
    "$dest2/usr/local/share/dbus-1/system-services/org.snpguard.SnpGuard1.service" \
    || fail "PREFIX=/usr/local did not rewrite the D-Bus activation Exec="

# 3. A missing source fails loudly and names the file.
dest3="$scratch/partial"
if err=$(make -s install DESTDIR="$dest3" TARGET_DIR="$scratch/none" 2>&1 >/dev/null); then
    fail "install succeeded without binaries"
fi
grep -q "install: $scratch/none/snpguardctl is missing" <<<"$err" \
    || fail "missing binary not named: $err"

# 4. The agent's simulator build (test only) is never installed.
sim="$scratch/sim"
mkdir -p "$sim"
cp "$bins"/* "$sim/"
printf 'WARNING: this agent is built with the SIMULATED report source\n' >> "$sim/snpguard-agent"
if err=$(make -s install DESTDIR="$scratch/simroot" TARGET_DIR="$sim" AGENT_BIN="$sim/snpguard-agent" 2>&1 >/dev/null); then
    fail "install accepted the agent's simulator build"
fi
grep -q "is the agent's simulator build (test only); run make agent" <<<"$err" \
    || fail "simulator build not named: $err"
[ ! -e "$scratch/simroot/usr/lib/snpguard/snpguard-agent" ] || fail "the simulator agent was installed"

echo "install-tree: ok (${#expected[@]} files)"
