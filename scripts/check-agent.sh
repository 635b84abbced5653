#!/usr/bin/env bash
# Checks the built guest agent: present, statically linked (no PT_INTERP,
# so it runs in any initrd), and at most MAX bytes. Prints its size.
# Usage: check-agent.sh BINARY MAX_BYTES
set -euo pipefail

bin=${1:?usage: check-agent.sh BINARY MAX_BYTES}
max=${2:?usage: check-agent.sh BINARY MAX_BYTES}
fail() { echo "check-agent: $bin: $*" >&2; exit 1; }

[ -f "$bin" ] || fail "missing (run make agent)"
head -c 4 "$bin" | cmp -s - <(printf '\177ELF') || fail "not an ELF file"
if readelf -lW "$bin" | grep -q 'INTERP'; then
    fail "has a PT_INTERP (dynamically linked); the initrd has no loader for it"
fi
if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    fail "needs shared libraries: $(readelf -dW "$bin" | grep NEEDED | tr -s ' ' | tr '\n' ' ')"
fi
size=$(stat -c %s "$bin")
[ "$size" -le "$max" ] || fail "$size bytes is more than the $max allowed"
echo "check-agent: $bin: static, $size bytes ($(( size / 1024 )) KiB, limit $(( max / 1024 )) KiB)"
