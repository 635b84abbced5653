#!/bin/bash
# The checks of `make test-host`, run INSIDE the test host (a Debian 13 VM
# with systemd as PID 1, booted by tests/host/run.sh) as root, from the
# HOSTTEST disk mounted read-only on the directory this script is in. It
# holds the packages (debs/), a higher-versioned rebuild of them
# (upgrade/), the simulated platform's tool (snpguard-sim), AMD's Genoa
# ARK and ASK, and the OVMF AmdSev footer for synthetic staging
# directories.
#
# Every `check NAME FUNCTION` reports `HOSTTEST ok NAME` or `HOSTTEST FAIL
# NAME` with the failing output on the serial console (and skips the
# rest); run.sh requires an
# `ok` for every check named in this file and `HOSTTEST end 0`. The checks
# run in order and build on each other (the packages installed, the
# service enabled, the records registered). Cockpit is checked from the
# host: at `HOSTTEST cockpit-ready` run.sh drives headless Chromium
# through the forwarded cockpit.socket and answers on the virtio port.
# The check functions are called through `check`:
# shellcheck disable=SC2317
set -uo pipefail

HT=$(cd "$(dirname "$0")" && pwd)
CONSOLE=/dev/ttyS0
CTL=/dev/virtio-ports/org.snpguard.hosttest
SIM="$HT/snpguard-sim"
PORT=3000
STATE=/var/lib/snpguard
DROPIN=/etc/snpguard/snpguardd.toml.d/50-hosttest.toml
SIM_ARK=/etc/snpguard/hosttest-sim-ark.pem
# The Cockpit logins run.sh uses (tests/cockpit/host.mjs).
ADMIN=hostadmin
ADMIN_PASSWORD=hosttest-admin-pw
USER_=hostuser
USER_PASSWORD=hosttest-user-pw

say() { printf 'HOSTTEST %s\n' "$*" >"$CONSOLE"; }

failed=0
# check NAME FUNCTION: runs FUNCTION (with `set -e`: its first failing
# command fails it) and reports it.
check() {
    local name=$1 fn=$2 out rc started=$SECONDS
    # The checks build on each other: after a failure, the rest would
    # only fail for its sake.
    if [ "$failed" -gt 0 ]; then
        say "skipped $name"
        return
    fi
    # Without pipefail inside: `producer | grep -q` must not fail when
    # grep stops reading early.
    # Traced: the tail of a failure's output shows the failing command.
    out=$( (set -ex +o pipefail; "$fn") 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then
        say "ok $name ($((SECONDS - started)) s)"
    else
        failed=$((failed + 1))
        say "FAIL $name (exit $rc, $((SECONDS - started)) s)"
        printf '%s\n' "$out" | tail -n 40 | sed 's/^/HOSTTEST   | /' >"$CONSOLE"
    fi
}

# until_true SECONDS CMD...: polls CMD each second until it succeeds.
until_true() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "timed out after ${deadline} s: $*"; return 1; }
        sleep 1
    done
}

# not CMD...: CMD fails (`! CMD` would never stop a `set -e` function).
not() {
    if "$@"; then
        echo "unexpectedly succeeded: $*"
        return 1
    fi
}
enabled_is() { snpguardctl records show "$1" | grep -qE "^Enabled: +$2\$"; }
record_id() { snpguardctl records show "$1" | sed -n 's/^Id: *//p'; }
as_admin() { runuser -u "$ADMIN" -- "$@"; }
as_user() { runuser -u "$USER_" -- "$@"; }
main_pid() { systemctl show -P MainPID snpguardd.service; }
active() { systemctl is-active --quiet snpguardd.service; }
# A daemon other than the one with PID $1 is running and ready.
restarted() { active && [ "$(main_pid)" != 0 ] && [ "$(main_pid)" != "$1" ]; }
records() { snpguardctl records list; }
# Both records survive whatever was just done to the daemon.
records_kept() {
    local list
    list=$(records)
    if ! grep -qw web <<<"$list" || ! grep -qw db <<<"$list"; then
        echo "records lost: $list"
        return 1
    fi
}
# expect_refused WHAT CMD...: CMD fails and says why and what to do.
expect_refused() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then
        echo "$what was not refused: $out"
        return 1
    fi
    if ! grep -q "needs an administrator's authentication" <<<"$out" || ! grep -q snpguard-admin <<<"$out"; then
        echo "$what: refused without saying why and what to do: $out"
        return 1
    fi
}
stage() { # stage DIR OWNER: a synthetic staging directory sealed to this daemon
    "$SIM" stage --dir "$1" --ingestion-key "$STATE/ingestion.pub" \
        --ovmf-suffix "$HT/ovmf_AmdSev_suffix.bin" >/dev/null
    chown -R "$2:" "$1"
}
register_args() { # NAME STAGING BUNDLE
    echo register --name "$1" --vcpus 1 --vcpu-type EPYC-v4 --allow-test-root \
        --staging-dir "$2" --out-bundle "$3"
}
# journal_count FIELD=VALUE...: how many of snpguardd's entries have all
# of these fields.
journal_count() {
    journalctl -q -u snpguardd.service -o verbose "$@" | grep -c MESSAGE= || true
}
# journal_has FIELD=VALUE...: snpguardd's journal has an entry with all of
# these fields; prints the entries.
journal_has() {
    local out
    out=$(journalctl -q -u snpguardd.service -o verbose "$@")
    printf '%s\n' "$out"
    grep -q MESSAGE= <<<"$out" || { echo "no journal entry with $*"; return 1; }
}

install_packages() {
    # No apt sources and no network (QEMU's restricted user network):
    # everything the packages depend on is in the image.
    apt-get install -y -q "$HT"/debs/snpguard_*.deb "$HT"/debs/cockpit-snpguard_*.deb
    dpkg-query -W -f '${Status}\n' snpguard cockpit-snpguard | grep -c '^install ok installed$' | grep -qx 2
    getent group snpguard-admin
    id snpguard
    # The drop-in directory is there before the daemon's first start, so
    # an operator can configure it first (docs/packaging.md).
    [ -d "${DROPIN%/*}" ]
    usermod -aG snpguard-admin "$ADMIN"
}

not_enabled() {
    if systemctl is-enabled --quiet snpguardd.service || systemctl is-enabled --quiet snpguardd.socket; then
        echo "the package enabled the units; it must leave that to the operator"
        return 1
    fi
    not active
}

configure() {
    # The simulated platform's root as a test root, in a drop-in of its
    # own (what user_guide.md section 2 describes), and no KDS: the VM
    # has no network beyond the host.
    "$SIM" init --product genoa --dir /root/sim >/dev/null
    install -m 0644 /root/sim/ark.pem "$SIM_ARK"
    cat >"$DROPIN" <<EOF
# make test-host: the simulated platform's root (TEST ONLY)
[[test_roots]]
product = "genoa"
ark_path = "$SIM_ARK"

[kds]
enabled = false
EOF
}

enable_now() {
    systemctl enable --now snpguardd.socket snpguardd.service
    until_true 120 active
    systemctl is-enabled --quiet snpguardd.service
    systemctl is-active --quiet snpguardd.socket
    journal_has DROPIN="$DROPIN"
}

security_score() {
    local line score
    line=$(systemd-analyze security --no-pager snpguardd.service | grep 'Overall exposure level')
    echo "$line"
    score=$(sed -E 's/.*: ([0-9.]+) .*/\1/' <<<"$line")
    awk -v s="$score" 'BEGIN { exit !(s <= 1.6) }' || { echo "exposure $score is above 1.6"; return 1; }
}

sandboxed() {
    local pid status
    pid=$(main_pid)
    status=$(cat "/proc/$pid/status")
    [ "$(ps -o user= -p "$pid")" = snpguard ] || { echo "runs as $(ps -o user= -p "$pid")"; return 1; }
    grep -qE '^NoNewPrivs:\s+1$' <<<"$status"
    grep -qE '^CapEff:\s+0+$' <<<"$status"
    grep -qE '^CapPrm:\s+0+$' <<<"$status"
    grep -qE '^Seccomp:\s+2$' <<<"$status"
    # The daemon's own account of its Landlock domain (ABI 7 is newer
    # than this kernel: partial is this kernel's best).
    journalctl -q -u snpguardd.service -o verbose _PID="$pid" | grep -E '^\s+LANDLOCK=(full|partial)$'
}

dbus_activation() {
    systemctl stop snpguardd.service
    not active
    busctl --timeout=180 call org.snpguard.SnpGuard1 / org.freedesktop.DBus.Peer Ping
    until_true 60 active
}

socket_activation() {
    systemctl stop snpguardd.service
    not active
    local code
    code=$(curl -sk --max-time 180 -o /tmp/challenge.json -w '%{http_code}' \
        -X POST "https://127.0.0.1:$PORT/v1/attest/challenge")
    [ "$code" = 200 ] || { echo "POST /v1/attest/challenge: HTTP $code"; return 1; }
    grep -q '"nonce"' /tmp/challenge.json
    active
}

register_as_root() {
    stage /root/stage-web root
    # shellcheck disable=SC2046 # the words of register_args
    snpguardctl $(register_args web /root/stage-web /root/web.tar.gz)
    enabled_is web yes
    journal_has NAME=web CALLER_UID=0 RECORD="$(record_id web)" | grep -qE '^ +MEASUREMENT=[0-9a-f]{96}$'
}

register_as_admin() {
    local home=/home/$ADMIN
    stage "$home/stage-db" "$ADMIN"
    # shellcheck disable=SC2046
    as_admin snpguardctl $(register_args db "$home/stage-db" "$home/db.tar.gz")
    cp "$home/db.tar.gz" /root/db.tar.gz
    journal_has NAME=db CALLER_UID="$(id -u "$ADMIN")"
}

refused_as_user() {
    local home=/home/$USER_
    stage "$home/stage-x" "$USER_"
    # shellcheck disable=SC2046
    expect_refused "register as $USER_" as_user snpguardctl $(register_args x "$home/stage-x" "$home/x.tar.gz")
    not snpguardctl records show x
    expect_refused "disable as $USER_" as_user snpguardctl records disable web
    enabled_is web yes
    expect_refused "certs import as $USER_" as_user snpguardctl certs import "$HT/genoa-ark.pem" "$HT/genoa-ask.pem"
}

list_as_user() {
    local list
    list=$(as_user snpguardctl records list)
    grep -qw web <<<"$list"
    grep -qw db <<<"$list"
}

disable_enable() {
    local who uid
    for who in root "$ADMIN"; do
        uid=$(id -u "$who")
        runuser -u "$who" -- snpguardctl records disable web
        enabled_is web no
        runuser -u "$who" -- snpguardctl records enable web
        enabled_is web yes
        journal_has NAME=web ENABLED=false CALLER_UID="$uid"
        journal_has NAME=web ENABLED=true CALLER_UID="$uid"
    done
}

certs_import() {
    snpguardctl certs import "$HT/genoa-ark.pem" "$HT/genoa-ask.pem"
    as_admin snpguardctl certs import "$HT/genoa-ask.pem"
    snpguardctl certs list | grep -qi genoa
}

attest() {
    local ca=$STATE/tls/cert.pem
    "$SIM" attest --dir /root/sim --bundle /root/web.tar.gz --ca "$ca" --server "https://127.0.0.1:$PORT"
    journal_has OUTCOME=released RECORD="$(record_id web)" NAME=web
    # A refusal is journaled with its reason: db disabled, then enabled.
    snpguardctl records disable db
    if "$SIM" attest --dir /root/sim --bundle /root/db.tar.gz --ca "$ca" \
        --server "https://127.0.0.1:$PORT" >/tmp/refused.out 2>&1; then
        echo "a disabled record's guest was released its key"
        return 1
    fi
    snpguardctl records enable db
    journal_has OUTCOME=refused REASON=record-disabled RECORD="$(record_id db)"
}

# No secret of the daemon's in the journal: its key files, in every
# encoding a log line could carry them, and no PEM private key.
journal_no_secret() {
    local all f enc
    all=$(journalctl -q -o export)
    [ -n "$all" ]
    not grep -q 'PRIVATE KEY' <<<"$all"
    local n=0
    while IFS= read -r -d '' f; do
        n=$((n + 1))
        for enc in "$(base64 -w0 "$f")" "$(od -An -vtx1 "$f" | tr -d ' \n')"; do
            [ "${#enc}" -ge 32 ] || continue
            not grep -qF "${enc:0:32}" <<<"$all"
        done
    done < <(find "$STATE" -maxdepth 2 -type f \( -name '*.key' -o -name 'master*' \) -print0)
    [ "$n" -gt 0 ] || { echo "no key file found under $STATE to look for"; return 1; }
}

killed_restart() {
    local pid
    pid=$(main_pid)
    systemctl kill --kill-whom=main --signal=SIGKILL snpguardd.service
    until_true 120 restarted "$pid"
    records_kept
}

watchdog_restart() {
    local pid
    pid=$(main_pid)
    kill -STOP "$pid"
    # WatchdogSec=30s, then Restart=.
    until_true 240 restarted "$pid"
    journalctl -q -u snpguardd.service -o cat | grep -qi watchdog
    records_kept
}

man_pages() {
    man -P cat snpguardctl | grep -q register
    man -P cat 8 snpguardd | grep -q snpguardd
    man -P cat 5 snpguardd.toml | grep -q test_roots
}

completion() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    bash -c '
        . /usr/share/bash-completion/bash_completion
        _comp_load snpguardctl 2>/dev/null || __load_completion snpguardctl
        fn=$(complete -p snpguardctl | sed -nE "s/.*-F ([^ ]+).*/\1/p")
        COMP_WORDS=(snpguardctl reg); COMP_CWORD=1
        COMP_LINE="snpguardctl reg"; COMP_POINT=${#COMP_LINE}
        "$fn" snpguardctl reg snpguardctl
        printf "%s\n" "${COMPREPLY[@]}"' | grep -qx register
}

cockpit() {
    mkdir -p /etc/cockpit
    # Plain HTTP on the forwarded port: the test browser is on the host.
    printf '[WebService]\nAllowUnencrypted = true\n' >/etc/cockpit/cockpit.conf
    systemctl start cockpit.socket
    curl -s --max-time 60 -o /dev/null http://127.0.0.1:9090/
    local admin_uid user_uid before_admin before_user
    admin_uid=$(id -u "$ADMIN")
    user_uid=$(id -u "$USER_")
    before_admin=$(journal_count NAME=web ENABLED=false CALLER_UID="$admin_uid")
    before_user=$(journal_count NAME=web CALLER_UID="$user_uid")
    say cockpit-ready
    # The port reads as closed until run.sh connects: keep it open and
    # poll.
    local reply='' deadline=$((SECONDS + 1200))
    exec 3<"$CTL"
    until read -r -t 5 reply <&3; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "no answer from the host's Cockpit test"; return 1; }
        sleep 1
    done
    exec 3<&-
    [ "$reply" = ok ] || { echo "the host's Cockpit test: $reply"; return 1; }
    # What the browser did went through the real polkitd as hostadmin,
    # and nothing as the ordinary user.
    enabled_is web yes
    [ "$(journal_count NAME=web ENABLED=false CALLER_UID="$admin_uid")" -eq $((before_admin + 1)) ]
    [ "$(journal_count NAME=web CALLER_UID="$user_uid")" -eq "$before_user" ]
}

upgrade() {
    local pid want
    pid=$(main_pid)
    want=$(cat "$HT/upgrade/version")
    apt-get install -y -q "$HT"/upgrade/*.deb
    [ "$(dpkg-query -W -f '${Version}' snpguard)" = "$want" ]
    until_true 120 restarted "$pid"
    records_kept
}

remove() {
    apt-get remove -y -q snpguard cockpit-snpguard
    not active
    not systemctl is-active --quiet snpguardd.socket
    [ -f "$STATE/master.key" ] || [ -n "$(ls -A "$STATE")" ]
    [ -f "$DROPIN" ]
    dpkg-query -W -f '${Status}\n' snpguard | grep -q 'config-files'
}

purge() {
    apt-get purge -y -q snpguard
    local status
    status=$(dpkg-query -W -f '${db:Status-Status}' snpguard 2>/dev/null || true)
    case "$status" in
        "" | not-installed) ;;
        *) echo "snpguard is $status after purge"; return 1 ;;
    esac
    [ ! -e /usr/libexec/snpguard/snpguardd ]
    [ ! -e /etc/systemd/system/sockets.target.wants/snpguardd.socket ]
    [ ! -e /etc/systemd/system/multi-user.target.wants/snpguardd.service ]
    # The operator's own drop-in and the daemon's state (the master key,
    # the sealed disk keys) stay: docs/packaging.md.
    [ -f "$DROPIN" ]
    [ -n "$(ls -A "$STATE")" ]
}

say "start"
useradd -m -s /bin/bash "$ADMIN"
useradd -m -s /bin/bash "$USER_"
printf '%s:%s\n%s:%s\n' "$ADMIN" "$ADMIN_PASSWORD" "$USER_" "$USER_PASSWORD" | chpasswd

check install install_packages
check not-enabled not_enabled
check configure configure
check enable-now enable_now
check security-score security_score
check sandboxed sandboxed
check dbus-activation dbus_activation
check socket-activation socket_activation
check register-as-root register_as_root
check register-as-admin register_as_admin
check refused-as-user refused_as_user
check list-as-user list_as_user
check disable-enable disable_enable
check certs-import certs_import
check attest attest
check sigkill-restart killed_restart
check watchdog-restart watchdog_restart
check journal-no-secret journal_no_secret
check man-pages man_pages
check completion completion
check cockpit cockpit
check upgrade upgrade
check remove remove
check purge purge

say "end $failed"
exit 0
