#!/usr/bin/env bash
# Runs commands side by side ("lanes"), each output line prefixed with its
# lane's name and the seconds since LANES_EPOCH (a `date +%s`; default:
# when this script started), e.g. "[boot 1234s] ...", and fails naming
# every lane that failed, each lane's end with its time. `make test` runs
# its slow suites this way: a QEMU/TCG guest or a libguestfs appliance
# keeps about one core busy, so two lanes fill a two-core machine.
#
# Usage: scripts/lanes.sh NAME=COMMAND [NAME=COMMAND ...]
# COMMAND runs with `bash -c`. On SIGINT or SIGTERM every lane's process
# group is stopped.
set -uo pipefail

usage() {
    echo "usage: $0 NAME=COMMAND [NAME=COMMAND ...]" >&2
    exit 2
}
[ "$#" -ge 1 ] || usage

# Each background job gets its own process group (job control), so a
# lane is stopped with everything it started.
set -m
epoch=${LANES_EPOCH:-$EPOCHSECONDS}
case "$epoch" in
    '' | *[!0-9]*) echo "lanes: LANES_EPOCH must be seconds since 1970, got '$epoch'" >&2; exit 2 ;;
esac
elapsed() { echo "$((EPOCHSECONDS - epoch))s"; }
# Prefixes each line read with "[NAME Ns] " (a last line without a
# newline included; the arithmetic inline, as elapsed's, without a fork
# per line).
prefix() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        printf '[%s %ds] %s\n' "$1" "$((EPOCHSECONDS - epoch))" "$line"
    done
}
names=()
pids=()
stop() {
    for pid in "${pids[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null
    done
    exit 130
}
trap stop INT TERM

for spec in "$@"; do
    name=${spec%%=*}
    cmd=${spec#*=}
    case "$name" in
        "$spec" | "" | *[!A-Za-z0-9_-]*)
            echo "lanes: '$spec' is not NAME=COMMAND (NAME: letters, digits, - and _)" >&2
            usage
            ;;
    esac
    (
        bash -c "$cmd" 2>&1 | prefix "$name"
        exit "${PIPESTATUS[0]}"
    ) &
    pids+=("$!")
    names+=("$name")
    echo "lanes: started $name at $(elapsed): $cmd"
done

failed=()
for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
        echo "lanes: ${names[$i]} passed at $(elapsed)"
    else
        rc=$?
        echo "lanes: ${names[$i]} FAILED (exit $rc) at $(elapsed); its lines are prefixed [${names[$i]} …]"
        failed+=("${names[$i]}")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "lanes: failed: ${failed[*]}" >&2
    exit 1
fi
