#!/usr/bin/env bash
# The main job on embedded defaults. Today: verify a real AMD SEV-SNP
# report against AMD's pinned root and compute a launch digest, checked
# against the published reference value. Grows with the project.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
ctl="$top/target/release/snpguardctl"
td="${SNPGUARD_TESTDATA:-$top/../shared/testdata/snp}"
build="$top/build/demo"

[ -x "$ctl" ] || { echo "demo: $ctl missing; run 'make build' first" >&2; exit 2; }
[ -d "$td/reports" ] || { echo "demo: AMD test data not found at $td (set SNPGUARD_TESTDATA)" >&2; exit 2; }
mkdir -p "$build"

step() { printf '\n== %s\n' "$*"; }

step "1. verify a real AMD Milan report (VCEK -> ASK -> pinned ARK, signature, policy, TCB)"
"$ctl" report verify --report "$td/reports/milan-virtee/report.bin" \
    --vcek "$td/reports/milan-virtee/vcek.der" --allow-smt

step "2. the same report with a wrong expected measurement must be rejected"
wrong=$(printf '00%.0s' $(seq 48))
if "$ctl" report verify --report "$td/reports/milan-virtee/report.bin" \
    --vcek "$td/reports/milan-virtee/vcek.der" --allow-smt --measurement "$wrong"; then
    echo "demo: a wrong measurement was accepted" >&2; exit 1
fi

step "3. launch digest: OVMF AmdSev fixture, 1 x EPYC-v4, cmdline 'console=ttyS0 loglevel=7'"
: > "$build/kernel"; : > "$build/initrd"
digest=$("$ctl" measure --ovmf "$td/measurement/ovmf_AmdSev_suffix.bin" \
    --kernel "$build/kernel" --initrd "$build/initrd" --append "console=ttyS0 loglevel=7" \
    --vcpus 1 --vcpu-type EPYC-v4 --guest-features 0x21)
expected=803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977
echo "launch digest: $digest"
[ "$digest" = "$expected" ] || { echo "demo: digest differs from the sev-snp-measure reference $expected" >&2; exit 1; }
echo "matches the sev-snp-measure reference"
