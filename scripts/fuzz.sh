#!/usr/bin/env bash
# make fuzz: every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS
# seconds each (default 60), or until RUNS executions when given (the
# long run: `make fuzz FUZZ_SECONDS=3600 FUZZ_RUNS=10000000`, whichever
# comes first), one after the other, from the seed corpora
# built at run time (fuzz/corpus/<target>, kept between runs) with the
# target's dictionary. Installs the nightly toolchain and cargo-fuzz when
# missing. Logs go to fuzz/logs/<target>.log; crashes to
# fuzz/artifacts/<target>/ (reproduce with `cargo +nightly fuzz run
# --features libfuzzer --target-dir fuzz/target <target> <file>`, then
# add the file to fuzz/regressions/<target>/). Exits 1 when a target
# failed; prints each target's final libFuzzer stats. FUZZ_TARGETS (a
# space-separated list, in the order to run them) runs only those
# targets. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
runs="${2:-}"
case "$seconds" in
    ''|*[!0-9]*) echo "fuzz: FUZZ_SECONDS must be a number of seconds, got '$seconds'" >&2; exit 2 ;;
esac
case "$runs" in
    '') ;;
    *[!0-9]*) echo "fuzz: FUZZ_RUNS must be a number of executions, got '$runs'" >&2; exit 2 ;;
esac
only="${3:-}"
cargo="${CARGO:-cargo}"

rustup toolchain list | grep -q '^nightly' \
    || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 \
    || "$cargo" install cargo-fuzz --locked

# The workspace's release profile uses thin LTO: every one of the fuzz
# binaries would re-optimise all of its dependencies (minutes each on 2
# cores). Fuzz builds go without.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16

"$cargo" run --quiet -p snpguard-fuzz --bin snpguard-fuzz-seeds --locked

all="$("$cargo" run --quiet -p snpguard-fuzz --bin snpguard-fuzz-seeds --locked -- --list)"
if [ -n "$only" ]; then
    chosen=""
    for t in $only; do
        line="$(awk -v t="$t" '$1 == t' <<<"$all")"
        if [ -z "$line" ]; then
            echo "fuzz: no target '$t' (FUZZ_TARGETS); the targets are: $(awk '{print $1}' <<<"$all" | tr '\n' ' ')" >&2
            exit 2
        fi
        chosen+="$line"$'\n'
    done
    all="$chosen"
fi

"$cargo" +nightly fuzz build --features libfuzzer --target-dir fuzz/target

mkdir -p fuzz/logs
failed=()
summary=()
while read -r target dict; do
    args=("-max_total_time=$seconds" -timeout=25 -print_final_stats=1)
    [ -z "$runs" ] || args+=("-runs=$runs")
    [ "$dict" = "-" ] || args+=("-dict=$dict")
    log="fuzz/logs/$target.log"
    echo "== $target: ${seconds}s"
    if ! "$cargo" +nightly fuzz run --features libfuzzer --target-dir fuzz/target \
        "$target" "fuzz/corpus/$target" -- "${args[@]}" >"$log" 2>&1; then
        failed+=("$target")
        tail -n 40 "$log" >&2
    fi
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)"
    summary+=("$(printf '%-18s %s' "$target" "${done_line:-no DONE line, see $log}")")
done < <(printf '%s\n' "$all" | sed '/^$/d')

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/logs/)" >&2
    exit 1
fi
echo "fuzz: ok (${#summary[@]} targets, ${seconds}s each)"
