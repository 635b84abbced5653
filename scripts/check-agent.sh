#!/usr/bin/env bash
# Checks the built guest agent: present, statically linked (no PT_INTERP,
# so it runs in any initrd), at most MAX bytes, and the kind it should be:
# --production (no simulated report source) or --simulator (the test-only
# build with it). Prints its size.
# Usage: check-agent.sh BINARY MAX_BYTES --production|--simulator
set -euo pipefail

usage="usage: check-agent.sh BINARY MAX_BYTES --production|--simulator"
bin=${1:?$usage}
max=${2:?$usage}
kind=${3:?$usage}
fail() { echo "check-agent: $bin: $*" >&2; exit 1; }
# The line a simulator build prints at every start (agent/src/main.rs);
# the production build has no such string.
marker='built with the SIMULATED report source'

[ -f "$bin" ] || fail "missing (run make agent)"
head -c 4 "$bin" | cmp -s - <(printf '\177ELF') || fail "not an ELF file"
if readelf -lW "$bin" | grep -q 'INTERP'; then
    fail "has a PT_INTERP (dynamically linked); the initrd has no loader for it"
fi
if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    fail "needs shared libraries: $(readelf -dW "$bin" | grep NEEDED | tr -s ' ' | tr '\n' ' ')"
fi
case "$kind" in
    --production)
        if grep -qaF "$marker" "$bin"; then
            fail "is the simulator build (feature simulator), not the production agent; run make agent"
        fi
        ;;
    --simulator)
        grep -qaF "$marker" "$bin" \
            || fail "is not the simulator build (no simulated report source); run make agent-sim"
        ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
size=$(stat -c %s "$bin")
[ "$size" -le "$max" ] || fail "$size bytes is more than the $max allowed"
echo "check-agent: $bin: static, $size bytes ($(( size / 1024 )) KiB, limit $(( max / 1024 )) KiB)"
