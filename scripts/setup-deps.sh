#!/usr/bin/env bash
# Installs what building and testing SnpGuard needs, idempotently: each
# step checks first and does nothing when its tool is already there.
# Run as root (or with sudo available) on Debian 12 or 13.
# `setup-deps.sh agent` installs only what the static guest agent needs
# (musl-gcc and the x86_64-unknown-linux-musl rustup target);
# `setup-deps.sh cockpit` the Cockpit browser test's; `setup-deps.sh deny`
# the pinned cargo-deny; `setup-deps.sh deb` what `make deb` needs;
# `setup-deps.sh rust` rustfmt and clippy (all `make lint-rust` needs:
# `make test` lints while the Debian packages install).
#
# Runs that install with apt or rustup take turns (a lock file): `make
# test` runs this script in two lanes at once, and apt, dpkg and rustup
# refuse or trip over a second run; the later one waits, then finds what
# the first installed. cargo-deny's build (`deny`, minutes) takes no turn.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Takes this run's turn: the script runs again under flock(1), which
# holds the lock itself (-o: nothing this run starts, such as a service a
# package starts, inherits it and keeps it after the run).
if [ "${1:-}" != deny ] && [ -z "${SNPGUARD_SETUP_TURN:-}" ]; then
    lock_dir=/run/lock
    [ -d "$lock_dir" ] && [ -w "$lock_dir" ] || lock_dir=${TMPDIR:-/tmp}
    export SNPGUARD_SETUP_TURN=1
    rc=0
    flock -n -E 75 -o "$lock_dir/snpguard-setup-deps.lock" "$0" "$@" || rc=$?
    [ "$rc" = 75 ] || exit "$rc"
    log "waiting for another setup-deps.sh run to finish"
    exec flock -o "$lock_dir/snpguard-setup-deps.lock" "$0" "$@"
fi

# rustfmt and clippy: `make lint-rust` (part of the test run).
rust_deps() {
    local comp
    for comp in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^${comp}"; then
            log "adding rustup component $comp"
            rustup component add "$comp"
        fi
    done
}

# The static agent: ring's C code needs musl-gcc; Rust needs the target.
agent_deps() {
    if ! command -v musl-gcc >/dev/null 2>&1; then
        log "installing musl-tools"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
        log "adding rustup target x86_64-unknown-linux-musl"
        rustup target add x86_64-unknown-linux-musl
    fi
}

# The Cockpit page's browser test (make test-cockpit): Debian's Cockpit
# web server and bridge, Chromium, and Node.js for playwright-core.
cockpit_deps() {
    local -a want=()
    [ -x /usr/lib/cockpit/cockpit-ws ] || [ -x /usr/libexec/cockpit-ws ] || want+=(cockpit-ws)
    command -v cockpit-bridge >/dev/null 2>&1 || want+=(cockpit-bridge)
    command -v chromium >/dev/null 2>&1 || want+=(chromium)
    command -v npm >/dev/null 2>&1 || want+=(nodejs npm)
    if [ "${#want[@]}" -gt 0 ]; then
        log "installing ${want[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"
    fi
}

# cargo-deny for `make deny` (part of `make lint`): built from crates.io
# at a pinned version with its own lock file (a few minutes, once; every
# CI run, whose machine is fresh). Built unoptimised, without debug
# information: optimised (-O3, no LTO) it took 7.5 minutes beside `make
# test`'s own builds; unoptimised 3 minutes beside the slow suites (110 s
# of CPU), and it still checks this workspace in 5 s. Niced: `make test`
# builds it beside the suite's own builds, which come first.
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"
deny_deps() {
    if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
        log "installing cargo-deny $CARGO_DENY_VERSION (cargo install)"
        CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
            CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
            nice -n 10 cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION"
    fi
}

# make deb: debhelper, lintian, and the package build's own build
# dependencies (debian/control).
deb_deps() {
    local -a want=()
    command -v dh >/dev/null 2>&1 || want+=(debhelper)
    command -v lintian >/dev/null 2>&1 || want+=(lintian)
    command -v dpkg-checkbuilddeps >/dev/null 2>&1 || want+=(dpkg-dev)
    if [ "${#want[@]}" -gt 0 ]; then
        log "installing ${want[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}"
    fi
}

if [ "${1:-}" = deb ]; then
    deb_deps
    log "Debian packaging tools present"
    exit 0
fi

if [ "${1:-}" = deny ]; then
    deny_deps
    log "cargo-deny $CARGO_DENY_VERSION present"
    exit 0
fi

if [ "${1:-}" = cockpit ]; then
    cockpit_deps
    log "cockpit test dependencies present"
    exit 0
fi

if [ "${1:-}" = rust ]; then
    rust_deps
    log "rustfmt and clippy present"
    exit 0
fi

if [ "${1:-}" = agent ]; then
    agent_deps
    log "agent toolchain present"
    exit 0
fi

# Debian packages: name of a package -> a file that proves it is installed.
declare -A APT=(
    [ovmf]=/usr/share/ovmf/OVMF.fd
    # systemd-analyze, systemd-sysusers, systemd-tmpfiles for make check-units
    [systemd]=/usr/bin/systemd-analyze
    # a private dbus-daemon for the daemon's integration tests
    [dbus]=/usr/bin/dbus-daemon
    # scripts/generate-tls-certs.sh and its test
    [openssl]=/usr/bin/openssl
    # the static guest agent (ring's C code)
    [musl-tools]=/usr/bin/musl-gcc
    # the agent's LUKS2 tests format volumes; readelf for check-agent.sh
    [cryptsetup-bin]=/usr/sbin/cryptsetup
    [binutils]=/usr/bin/readelf
    # make check-shell
    [shellcheck]=/usr/bin/shellcheck
    # make check-install renders the manual pages
    [groff-base]=/usr/bin/groff
)
# scripts/launch-qemu-snp.sh (jq; guestfish for --from-partition, which
# the libguestfs step below installs from backports) and its test.
APT[jq]=/usr/bin/jq
# records export --format squashfs (mksquashfs) and the launch script's
# squashfs bundles (unsquashfs).
APT[squashfs-tools]=/usr/bin/mksquashfs
# snpguardctl embed (qemu-img) and tests/guest/build-image.sh.
APT[qemu-utils]=/usr/bin/qemu-img
APT[gdisk]=/usr/sbin/sgdisk
APT[dosfstools]=/usr/sbin/mkfs.vfat
APT[mtools]=/usr/bin/mcopy
APT[attr]=/usr/bin/setfattr
APT[acl]=/usr/bin/setfacl
# The initrd boot test and the guest root file systems (tests/guest/,
# tests/system/): debootstrap, LUKS2 images, a static busybox for the
# test root's init, initrd tools, shellcheck for the initrd scripts.
APT[debootstrap]=/usr/sbin/debootstrap
APT[cryptsetup-bin]=/usr/sbin/cryptsetup
APT[busybox-static]=/usr/share/doc/busybox-static
APT[cpio]=/usr/bin/cpio
APT[zstd]=/usr/bin/zstd
APT[e2fsprogs]=/usr/sbin/mkfs.ext4
# the reference AES-XTS of the LUKS2 test disk's unit test
APT[python3-cryptography]=/usr/lib/python3/dist-packages/cryptography
# The fleet store's tests start their own PostgreSQL cluster (as the
# postgres account, in a temporary directory).
APT[postgresql]=/usr/lib/postgresql
# make deb and its test (make test-deb): debhelper, lintian.
APT[debhelper]=/usr/bin/dh
APT[lintian]=/usr/bin/lintian
APT[dpkg-dev]=/usr/bin/dpkg-checkbuilddeps
# make demo fetches the daemon's ingestion key over HTTPS as a user would.
APT[curl]=/usr/bin/curl
# pip only when no Python pip is there at all (pyenv's counts).
command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || APT[python3-pip]=/usr/bin/pip3

missing=()
for pkg in "${!APT[@]}"; do
    [ -e "${APT[$pkg]}" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    log "Debian packages present"
fi

# Adds Debian 12's bookworm-backports apt source unless one is configured;
# $1 says what needs it.
add_backports_source() {
    if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding the bookworm-backports source ($1)"
        printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
            'Suites: bookworm-backports' 'Components: main' \
            'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
            | as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    fi
}

# libguestfs for snpguardctl convert/embed (the guestfs crate links
# libguestfs-dev) and its appliance kernel. Debian 12 has a usable 1.48
# only in bookworm-backports, whose source is added when missing.
if [ ! -e /usr/bin/guestfish ] || [ ! -e /usr/include/guestfs.h ]; then
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    guestfs_release=()
    if [ "$codename" = bookworm ]; then
        add_backports_source libguestfs
        guestfs_release=(-t bookworm-backports)
    fi
    log "installing libguestfs-tools libguestfs-dev ${guestfs_release[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${guestfs_release[@]}" \
        libguestfs-tools libguestfs-dev
else
    log "libguestfs present"
fi
if ! compgen -G '/boot/vmlinuz-*' >/dev/null; then
    log "installing a kernel for the libguestfs appliance"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-image-amd64
fi

# QEMU >= 9.1 (the sev-snp-guest object of scripts/launch-qemu-snp.sh; the
# boot test runs it under TCG). Debian 12 has it only in bookworm-backports,
# whose source is added when missing; Debian 13's own QEMU is new enough.
qemu_ok() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local major minor
    read -r major minor < <(qemu-system-x86_64 --version \
        | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    [ -n "${minor:-}" ] || return 1
    [ "$major" -gt 9 ] || { [ "$major" -eq 9 ] && [ "$minor" -ge 1 ]; }
}
if ! qemu_ok; then
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    qemu_release=()
    if [ "$codename" = bookworm ]; then
        add_backports_source 'QEMU >= 9.1'
        qemu_release=(-t bookworm-backports)
    fi
    log "installing qemu-system-x86 ${qemu_release[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${qemu_release[@]}" qemu-system-x86
    qemu_ok || { echo "setup: qemu-system-x86_64 >= 9.1 is not installed" >&2; exit 1; }
else
    log "QEMU present: $(qemu-system-x86_64 --version | head -n 1)"
fi

rust_deps
agent_deps
cockpit_deps

# The reference implementation every launch digest is compared against.
if ! command -v sev-snp-measure >/dev/null 2>&1; then
    log "installing sev-snp-measure (PyPI)"
    pip_cmd=$(command -v pip3 || command -v pip)
    "$pip_cmd" install --quiet --disable-pip-version-check sev-snp-measure==0.0.13 \
        || "$pip_cmd" install --quiet --disable-pip-version-check --break-system-packages sev-snp-measure==0.0.13
    # pyenv installs console scripts behind shims that need a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    hash -r
fi
for tool in sev-snp-measure snp-create-id-block; do
    command -v "$tool" >/dev/null || { echo "setup: $tool is not on PATH after installing sev-snp-measure" >&2; exit 1; }
done
log "sev-snp-measure: $(command -v sev-snp-measure)"
