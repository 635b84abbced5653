#!/usr/bin/env bash
# Checks the install tree's systemd pieces without a running systemd:
#  - `systemd-analyze security --offline` on snpguardd.service must rate the
#    exposure at most 1.6 (--threshold counts tenths: 16 = 1.6);
#  - `systemd-analyze verify` on the units, inside a scratch root that holds
#    the units and a stand-in for the daemon binary (dependencies such as
#    dbus.socket live outside that root, hence --recursive-errors=no);
#  - systemd-sysusers and systemd-tmpfiles apply the snippets to the same
#    scratch root.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE_TENTHS=16
service=units/snpguardd.service

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || { echo "check-units: $tool missing; run make deps" >&2; exit 1; }
done

echo "check-units: systemd-analyze security --offline=true $service"
report=$(systemd-analyze security --offline=true --no-pager \
    --threshold="$MAX_EXPOSURE_TENTHS" "$service") || {
    printf '%s\n' "$report" | grep -E '✗|Overall' >&2
    echo "check-units: $service exposure is above 1.6; harden it" >&2
    exit 1
}
printf '%s\n' "$report" | grep 'Overall exposure level'

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
unitdir="$root/usr/lib/systemd/system"
mkdir -p "$unitdir" "$root/usr/libexec/snpguard" "$root/etc" \
    "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp units/snpguardd.service units/snpguardd.socket "$unitdir/"
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$service")
printf '#!/bin/sh\nexit 0\n' > "$root$exec_start"
chmod 0755 "$root$exec_start"

echo "check-units: systemd-analyze verify"
out=$(systemd-analyze verify --root="$root" --recursive-errors=no \
    "$unitdir/snpguardd.service" "$unitdir/snpguardd.socket" 2>&1) || {
    printf '%s\n' "$out" >&2
    exit 1
}
# verify exits 0 on some warnings (e.g. an unknown key is "ignored"); any
# output about our own files is a failure.
if printf '%s\n' "$out" | grep -q 'snpguardd\.'; then
    printf '%s\n' "$out" >&2
    exit 1
fi

echo "check-units: sysusers.d and tmpfiles.d"
: > "$root/etc/passwd"
: > "$root/etc/group"
cp sysusers.d/snpguard.conf "$root/usr/lib/sysusers.d/"
cp tmpfiles.d/snpguard.conf "$root/usr/lib/tmpfiles.d/"
systemd-sysusers --root="$root" >/dev/null 2>&1
grep -q '^snpguard:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$root/etc/passwd" || {
    echo "check-units: sysusers.d did not create the snpguard user" >&2; exit 1; }
grep -q '^snpguard-admin:x:[0-9]*:$' "$root/etc/group" || {
    echo "check-units: sysusers.d did not create the empty snpguard-admin group" >&2; exit 1; }
# The ACL line names the group, which exists in the scratch root only; the
# host's libacl cannot resolve it, so its failure is expected here.
systemd-tmpfiles --root="$root" --create 2>/dev/null
[ "$(stat -c '%a' "$root/var/lib/snpguard")" = 700 ] || {
    echo "check-units: /var/lib/snpguard is not 0700" >&2; exit 1; }
[ "$(stat -c '%a' "$root/var/lib/snpguard/import")" = 2770 ] || {
    echo "check-units: /var/lib/snpguard/import is not 2770" >&2; exit 1; }
echo "check-units: ok"
