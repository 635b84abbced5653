# shellcheck shell=bash
# Sourced by tests/install-tree.sh and tests/deb-package.sh: `make install`
# into a directory with stand-in binaries (one-line scripts), so that a
# test of the installed tree needs no build.
#
#   install_with_stand_ins SCRATCH DESTDIR [make variables...]
#
# The stand-ins are written to SCRATCH/bin.
install_with_stand_ins() {
    local scratch=$1 dest=$2 b
    shift 2
    mkdir -p "$scratch/bin"
    for b in snpguardd snpguardctl snpguard-agent; do
        printf '#!/bin/sh\n' >"$scratch/bin/$b"
    done
    make -s install DESTDIR="$dest" PREFIX=/usr TARGET_DIR="$scratch/bin" \
        AGENT_BIN="$scratch/bin/snpguard-agent" "$@" >/dev/null
}
