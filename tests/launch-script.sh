#!/usr/bin/env bash
# Tests scripts/launch-qemu-snp.sh without SEV-SNP hardware:
# - a real bundle (firmware, kernel, initrd, a hostile-looking cmdline,
#   an ID block signed by `snpguardctl id-block` for the launch digest
#   `snpguardctl measure` computed) is launched with --dry-run; the printed
#   command is parsed back and checked against the bundle byte for byte;
# - the same launch "for real" on a faked SNP host (sysfs, devices and
#   CPUID under SNPGUARD_HOST_ROOT) with a fake QEMU that records its argv:
#   identical to the dry run, and the extracted bundle is removed after;
# - --from-partition on a qcow2 with a LAUNCH_ARTIFACTS ext4 partition
#   (A/B slots, /artifacts -> A) built here with guestfish;
# - refusals: missing member, hostile members, bad launch-config.json,
#   a NUL in the cmdline, QEMU too old, no SEV-SNP on the host.
# Also shellchecks the script and this test.
# Env: SNPGUARD_CTL (snpguardctl binary; default: cargo build -p snpguardctl).
set -euo pipefail
export LC_ALL=C

top=$(cd "$(dirname "$0")/.." && pwd)
script=$top/scripts/launch-qemu-snp.sh
tmp=$(mktemp -d "${TMPDIR:-/tmp}/launch-test.XXXXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
# The test machines have no usable KVM; TCG works everywhere.
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
# One appliance cache for every run, whatever TMPDIR a run is given.
export LIBGUESTFS_CACHEDIR=${LIBGUESTFS_CACHEDIR:-${TMPDIR:-/var/tmp}}

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

for tool in shellcheck jq guestfish qemu-img python3 openssl mksquashfs unsquashfs; do
    command -v "$tool" >/dev/null || { echo "launch-script test: $tool missing (make deps)" >&2; exit 1; }
done

check "shellcheck launch-qemu-snp.sh and this test" shellcheck "$script" "$0"

ctl=${SNPGUARD_CTL:-}
if [ -z "$ctl" ]; then
    (cd "$top" && cargo build -q -p snpguardctl --locked)
    ctl=$top/target/debug/snpguardctl
fi
# The launch script checks bundles with it.
export SNPGUARD_CTL=$ctl
fixture=${SNPGUARD_TESTDATA:-$top/../shared/testdata/snp}/measurement/ovmf_AmdSev_suffix.bin
[ -f "$fixture" ] || { echo "launch-script test: $fixture missing (SNPGUARD_TESTDATA)" >&2; exit 1; }

# --- a real bundle -----------------------------------------------------------

src=$tmp/src
mkdir "$src"
cp "$fixture" "$src/firmware.fd"
head -c 70000 /dev/urandom >"$src/kernel"
head -c 50000 /dev/urandom >"$src/initrd"
# Spaces, both quotes, `=`, `$`, a command substitution, a backslash,
# glob and shell operators, a tab, UTF-8 and a trailing space.
marker=$tmp/INJECTED
cmdline="root=UUID=0b6f5c1e console=ttyS0 q=\"a b\" s='c d' v=\$HOME x=\$(touch $marker) \`touch $marker\` b=\\n g=* o=;&| t=	e é "
printf '%s' "$cmdline" >"$src/cmdline"
policy=0x30000
vcpus=2
vcpu_type=EPYC-Milan
measurement=$("$ctl" measure --ovmf "$src/firmware.fd" --kernel "$src/kernel" \
    --initrd "$src/initrd" --append "$cmdline" --vcpus "$vcpus" --vcpu-type "$vcpu_type")
openssl ecparam -name secp384r1 -genkey -noout -out "$tmp/id.pem" 2>/dev/null
openssl ecparam -name secp384r1 -genkey -noout -out "$tmp/author.pem" 2>/dev/null
family=00112233445566778899aabbccddeeff
image=ffeeddccbbaa99887766554433221100
digests=$("$ctl" id-block --measurement "$measurement" --id-key "$tmp/id.pem" \
    --author-key "$tmp/author.pem" --family-id "$family" --image-id "$image" \
    --policy "$policy" --out-id-block "$src/id-block.bin" --out-id-auth "$src/id-auth.bin")
id_digest=$(sed -n 's/^id-key-digest: //p' <<<"$digests")
author_digest=$(sed -n 's/^author-key-digest: //p' <<<"$digests")

write_config() { # write_config DIR [jq filter applied to the config]
    jq -n --arg m "$measurement" --arg i "$id_digest" --arg a "$author_digest" \
        --arg f "$family" --arg im "$image" --arg p "$policy" --argjson n "$vcpus" \
        --arg t "$vcpu_type" \
        '{version: 1, name: "web-1", vcpus: $n, vcpu_type: $t, guest_policy: $p,
          guest_features: "0x1", measurement: $m, id_key_digest: $i,
          author_key_digest: $a, family_id: $f, image_id: $im, kernel_hashes: true}
         | '"${2:-.}" >"$1/launch-config.json"
}
write_config "$src"

MEMBERS=(launch-config.json firmware.fd kernel initrd cmdline id-block.bin id-auth.bin)
# The bundle layout of snpguard_protocol::bundle::write_bundle: ustar, 0644, root,
# mtime 0, the members in order.
make_bundle() { # make_bundle DIR OUT [members...]
    local dir=$1 out=$2
    shift 2
    [ "$#" -gt 0 ] || set -- "${MEMBERS[@]}"
    tar --format=ustar --owner=0 --group=0 --numeric-owner --mtime=@0 --mode=0644 \
        -czf "$out" -C "$dir" -- "$@"
}
bundle=$tmp/launch-artifacts.tar.gz
make_bundle "$src" "$bundle"
hda=$tmp/guest.qcow2
qemu-img create -q -f qcow2 "$hda" 64M

# --- the dry run, parsed back --------------------------------------------------

# Arguments of the printed command, as the shell would pass them.
parse_command() { # parse_command FILE -> sets cmd=()
    local line
    line=$(<"$1")
    eval "cmd=( $line )"
}

arg_after() { # arg_after OPTION [N-th occurrence, 1-based]
    local i n=0
    for ((i = 0; i < ${#cmd[@]} - 1; i++)); do
        if [ "${cmd[$i]}" = "$1" ]; then
            n=$((n + 1))
            if [ "$n" = "${2:-1}" ]; then printf '%s' "${cmd[$((i + 1))]}"; return 0; fi
        fi
    done
    return 1
}

# key=value of the sev-snp-guest object.
snp_prop() {
    local obj
    obj=$(arg_after -object 2)
    tr ',' '\n' <<<"$obj" | sed -n "s/^$1=//p"
}

same_bytes() { cmp -s "$1" "$2"; }

check_command() { # check_command LABEL CBITPOS REDUCED
    local label=$1
    check "$label: the command is qemu-system-x86_64" [ "${cmd[0]}" = qemu-system-x86_64 ]
    printf '%s' "$(arg_after -append)" >"$tmp/got-cmdline"
    # $(...) strips trailing newlines; the cmdline has none, but a
    # trailing space must survive.
    check "$label: -append equals the bundle's cmdline byte for byte" same_bytes "$tmp/got-cmdline" "$src/cmdline"
    check "$label: the cmdline was not expanded by the shell" [ ! -e "$marker" ]
    check "$label: sev-snp-guest object first" [ "$(arg_after -object 2 | cut -d, -f1-2)" = sev-snp-guest,id=sev0 ]
    snp_prop id-block | base64 -d >"$tmp/got-id-block"
    snp_prop id-auth | base64 -d >"$tmp/got-id-auth"
    check "$label: id-block is the bundle's ID block" same_bytes "$tmp/got-id-block" "$src/id-block.bin"
    check "$label: id-auth is the bundle's ID auth block" same_bytes "$tmp/got-id-auth" "$src/id-auth.bin"
    check "$label: id-block base64 equals the file's" [ "$(snp_prop id-block)" = "$(base64 -w0 "$src/id-block.bin")" ]
    check "$label: id-auth base64 equals the file's" [ "$(snp_prop id-auth)" = "$(base64 -w0 "$src/id-auth.bin")" ]
    check "$label: policy equals launch-config.json" [ "$(snp_prop policy)" = "$policy" ]
    check "$label: author-key-enabled=on" [ "$(snp_prop author-key-enabled)" = on ]
    check "$label: kernel-hashes=on" [ "$(snp_prop kernel-hashes)" = on ]
    check "$label: cbitpos=$2" [ "$(snp_prop cbitpos)" = "$2" ]
    check "$label: reduced-phys-bits=$3" [ "$(snp_prop reduced-phys-bits)" = "$3" ]
    check "$label: -machine names the sev0 object" \
        [ "$(arg_after -machine)" = q35,confidential-guest-support=sev0,memory-backend=ram1 ]
    check "$label: -smp is the record's vCPU count" [ "$(arg_after -smp)" = "$vcpus" ]
    check "$label: -cpu is the record's vCPU model" [ "$(arg_after -cpu)" = "$vcpu_type" ]
    check "$label: -bios is the bundle's firmware" same_bytes "$(arg_after -bios)" "$src/firmware.fd"
    check "$label: -kernel is the bundle's kernel" same_bytes "$(arg_after -kernel)" "$src/kernel"
    check "$label: -initrd is the bundle's initrd" same_bytes "$(arg_after -initrd)" "$src/initrd"
    check "$label: -drive is the image, format stated" \
        [ "$(arg_after -drive)" = "file=$hda,if=virtio,format=qcow2" ]
    check "$label: memory backend and -m agree" \
        [ "$(arg_after -object 1)" = memory-backend-memfd,id=ram1,size=4G,share=true,prealloc=false ]
    check "$label: -m 4G" [ "$(arg_after -m)" = 4G ]
}

cmd=()
"$script" --hda "$hda" --artifacts "$bundle" --dry-run --workdir "$tmp/w1" \
    --cbitpos 51 --reduced-phys-bits 1 >"$tmp/dry1.out" 2>"$tmp/dry1.err" \
    || { cat "$tmp/dry1.err"; fail "dry run with --artifacts exits 0"; }
parse_command "$tmp/dry1.out"
check_command "--artifacts --dry-run" 51 1
check "dry run keeps --workdir with exactly the seven members" \
    [ "$(find "$tmp/w1" -mindepth 1 -printf '%f %y\n' | sort | tr '\n' ' ')" = "cmdline f firmware.fd f id-auth.bin f id-block.bin f initrd f kernel f launch-config.json f " ]

# Every property and the vCPU model exist in the installed QEMU.
qhelp=$(qemu-system-x86_64 -object sev-snp-guest,help 2>&1 || true)
qemu_bin=$(command -v qemu-system-x86_64)
for prop in $(arg_after -object 2 | tr ',' '\n' | sed -n 's/=.*//p'); do
    case "$prop" in
        id) ;;
        # Instance properties of sev-common: not in the class's help.
        cbitpos | reduced-phys-bits)
            check "QEMU knows the sev-common property $prop" grep -q -a -e "$prop" "$qemu_bin" ;;
        *) check "QEMU's sev-snp-guest has property $prop" grep -q "^  $prop=" <<<"$qhelp" ;;
    esac
done
mhelp=$(qemu-system-x86_64 -machine q35,help 2>&1 || true)
for prop in confidential-guest-support memory-backend; do
    check "QEMU's q35 machine has property $prop" grep -q "^  $prop=" <<<"$mhelp"
done

# The vCPU models a bundle may name are snpguard's own VcpuType list: the
# script asks `snpguardctl bundle check` and keeps no copy of its own.
check "the script keeps no list of vCPU models" bash -c "! grep -q '^VCPU_TYPES=' '$script'"

# --- a local launch: convert --no-encryption, launch-config ------------------

# A staging directory as `convert --no-encryption` writes it (the bundle's
# firmware, kernel, initrd and command line, and the label), made into a
# launch by `snpguardctl launch-config`, whose bundle the script boots with
# its NO CONFIDENTIALITY warning.
plain=$tmp/plain-guest
mkdir "$plain"
cp -- "$src/firmware.fd" "$src/kernel" "$src/initrd" "$plain/"
# A bootloader's command line as convert keeps it (printable text only).
plain_cmdline="root=UUID=0b6f5c1e-0000-4000-8000-000000000001 ro quiet console=ttyS0"
printf '%s' "$plain_cmdline" >"$plain/cmdline"
echo "label" >"$plain/no-encryption"
plain_measurement=$("$ctl" measure --ovmf "$src/firmware.fd" --kernel "$src/kernel" \
    --initrd "$src/initrd" --append "$plain_cmdline" --vcpus "$vcpus" --vcpu-type "$vcpu_type")
local_bundle=$tmp/local.tar.gz
if "$ctl" launch-config --staging-dir "$plain" --vcpus "$vcpus" --vcpu-type "$vcpu_type" \
    --out-bundle "$local_bundle" --json >"$tmp/local.json" 2>"$tmp/local.err"; then
    ok "launch-config makes the local launch"
else
    cat "$tmp/local.err"
    fail "launch-config makes the local launch"
fi
check "launch-config says the launch gives no confidentiality" grep -q 'NO CONFIDENTIALITY' "$tmp/local.err"
check "launch-config measures what snpguardctl measure measures" \
    [ "$(jq -r .measurement "$tmp/local.json")" = "$plain_measurement" ]
check "launch-config labels its config no_encryption" [ "$(jq -r .no_encryption "$plain/launch-config.json")" = true ]
check "launch-config names the directory" [ "$(jq -r .name "$tmp/local.json")" = plain-guest ]
cmd=()
if "$script" --hda "$hda" --artifacts "$local_bundle" --dry-run --workdir "$tmp/w-local" \
    --cbitpos 51 --reduced-phys-bits 1 >"$tmp/dry-local.out" 2>"$tmp/dry-local.err"; then
    ok "the local launch's bundle boots (dry run)"
else
    cat "$tmp/dry-local.err"
    fail "the local launch's bundle boots (dry run)"
fi
parse_command "$tmp/dry-local.out"
check "the local launch: the script warns NO CONFIDENTIALITY" grep -q 'WARNING: NO CONFIDENTIALITY' "$tmp/dry-local.err"
check "the local launch: id-block is launch-config's" \
    [ "$(snp_prop id-block)" = "$(base64 -w0 "$plain/id-block.bin")" ]
check "the local launch: policy is launch-config's" [ "$(snp_prop policy)" = 0x20000 ]
check "the local launch: -kernel is the staged kernel" same_bytes "$(arg_after -kernel)" "$plain/kernel"
check "a registered bundle gets no such warning" bash -c "! grep -q 'NO CONFIDENTIALITY' '$tmp/dry1.err'"
"$ctl" --bus-address "unix:path=$tmp/no-bus" register --name plain --vcpus 2 \
    --vcpu-type EPYC-v4 --staging-dir "$plain" --out-bundle "$tmp/never.tar.gz" \
    >/dev/null 2>"$tmp/register.err" && fail "register refuses a --no-encryption staging directory"
check "register refuses a --no-encryption staging directory, naming launch-config" \
    grep -q 'was written by .convert --no-encryption..*launch-config' "$tmp/register.err"
rm -rf -- "$tmp/w-local"

# --- a faked SNP host and a fake QEMU: the real path ----------------------------

fake_host() { # fake_host DIR SEV_SNP EAX EBX [no-sev]
    local d=$1
    mkdir -p "$d/sys/module/kvm_amd/parameters" "$d/dev/cpu/0"
    printf '%s\n' "$2" >"$d/sys/module/kvm_amd/parameters/sev_snp"
    : >"$d/dev/kvm"
    [ "${5:-}" = no-sev ] || : >"$d/dev/sev"
    # CPUID leaf 0x8000001F at its offset in a sparse file.
    python3 -c 'import struct,sys; f=open(sys.argv[1],"wb"); f.seek(0x8000001F); f.write(struct.pack("<4I", int(sys.argv[2]), int(sys.argv[3]), 0, 0))' \
        "$d/dev/cpu/0/cpuid" "$3" "$4"
}
fakebin=$tmp/bin
mkdir -p "$fakebin"
cat >"$fakebin/fake-qemu" <<EOF
#!/usr/bin/env bash
if [ "\${1:-}" = --version ]; then echo "QEMU emulator version 9.1.0"; exit 0; fi
printf '%s\0' "\$@" >"$tmp/fake-qemu.argv"
while [ "\$#" -gt 1 ]; do
    case "\$1" in -bios | -kernel | -initrd) cp -- "\$2" "$tmp/fake-qemu.\${1#-}" || exit 7 ;; esac
    shift
done
exit 0
EOF
chmod +x "$fakebin/fake-qemu"
# cbitpos 47, reduced-phys-bits 5, SNP (EAX bit 4) and SEV (bit 1).
fake_host "$tmp/host-ok" Y $((0x12)) $((47 | (5 << 6)))

SNPGUARD_HOST_ROOT=$tmp/host-ok "$script" --hda "$hda" --artifacts "$bundle" --dry-run \
    >"$tmp/dry2.out" 2>"$tmp/dry2.err" || { cat "$tmp/dry2.err"; fail "dry run on the faked host exits 0"; }
parse_command "$tmp/dry2.out"
check "dry run reads cbitpos and reduced-phys-bits from CPUID 0x8000001F" \
    [ "$(snp_prop cbitpos),$(snp_prop reduced-phys-bits)" = 47,5 ]
dry_args=("${cmd[@]:1}")
rm -rf -- "$(dirname "$(arg_after -kernel)")"

if SNPGUARD_HOST_ROOT=$tmp/host-ok "$script" --hda "$hda" --artifacts "$bundle" \
    --qemu "$fakebin/fake-qemu" >"$tmp/run.out" 2>"$tmp/run.err"; then
    ok "launch on a faked SNP host runs QEMU and exits 0"
else
    cat "$tmp/run.err"
    fail "launch on a faked SNP host runs QEMU and exits 0"
fi
mapfile -d '' -t cmd < <(cat "$tmp/fake-qemu.argv" 2>/dev/null)
cmd=(qemu-system-x86_64 "${cmd[@]}")
run_args=("${cmd[@]:1}")
run_kernel=$(arg_after -kernel)
# The files are gone once QEMU exits: compare the copies it made.
for i in "${!cmd[@]}"; do
    case "${cmd[$i]}" in
        -bios) cmd[i + 1]=$tmp/fake-qemu.bios ;;
        -kernel) cmd[i + 1]=$tmp/fake-qemu.kernel ;;
        -initrd) cmd[i + 1]=$tmp/fake-qemu.initrd ;;
    esac
done
check_command "real launch (fake QEMU)" 47 5
# Equal except for the private directory's name.
strip_dir() { sed -E 's#/[^ ]*/(firmware\.fd|kernel|initrd)#DIR/\1#g'; }
check "real launch argv equals the dry run's" \
    [ "$(printf '%s\n' "${run_args[@]}" | strip_dir)" = "$(printf '%s\n' "${dry_args[@]}" | strip_dir)" ]
check "the extracted bundle is removed after QEMU exits" [ ! -e "$run_kernel" ]

# --- refusals ---------------------------------------------------------------------

refused() { # refused LABEL EXPECTED-MESSAGE ARGS... (env via `env`)
    local label=$1 want=$2 rc=0
    shift 2
    TMPDIR=$scratch "$@" >"$tmp/ref.out" 2>"$tmp/ref.err" || rc=$?
    if [ "$rc" = 1 ] && grep -qF -- "$want" "$tmp/ref.err" && [ ! -s "$tmp/ref.out" ]; then
        ok "refused: $label"
    else
        fail "refused: $label (exit $rc, stderr: $(tr '\n' ' ' <"$tmp/ref.err"))"
    fi
}
# Where refused runs would leave their private directories (guestfish
# keeps its own files there too).
scratch=$tmp/scratch
mkdir "$scratch"
leftovers() { find "$scratch" -mindepth 1 -maxdepth 1 -name 'snpguard-launch.*'; }
dry() { "$script" --hda "$hda" --dry-run --cbitpos 51 --reduced-phys-bits 1 "$@"; }

make_bundle "$src" "$tmp/missing.tar.gz" launch-config.json firmware.fd kernel initrd cmdline id-block.bin
refused "a member is missing" "bundle member 'id-auth.bin' is missing" dry --artifacts "$tmp/missing.tar.gz"

# Hostile archives, written member by member.
hostile() { # hostile OUT KIND
    python3 - "$src" "$1" "$2" <<'PY'
import io, sys, tarfile
src, out, kind = sys.argv[1:]
names = ["launch-config.json", "firmware.fd", "kernel", "initrd", "cmdline", "id-block.bin", "id-auth.bin"]
with tarfile.open(out, "w:gz", format=tarfile.USTAR_FORMAT) as t:
    for n in names:
        if kind == "symlink" and n == "kernel":
            i = tarfile.TarInfo(n); i.type = tarfile.SYMTYPE; i.linkname = "/etc/passwd"; t.addfile(i); continue
        if kind == "hardlink" and n == "kernel":
            i = tarfile.TarInfo(n); i.type = tarfile.LNKTYPE; i.linkname = "../../etc/passwd"; t.addfile(i); continue
        t.add(f"{src}/{n}", arcname=n)
    def extra(name, data=b"x"):
        i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
    if kind == "dotdot": extra("../evil")
    if kind == "absolute": extra("/tmp/evil")
    if kind == "unknown": extra("extra")
    if kind == "duplicate": extra("cmdline", b"init=/bin/sh")
    if kind == "directory":
        i = tarfile.TarInfo("A"); i.type = tarfile.DIRTYPE; t.addfile(i)
PY
}
for kind in dotdot absolute symlink hardlink unknown duplicate directory; do
    hostile "$tmp/$kind.tar.gz" "$kind"
done
refused "a ../ member" "has a '..' component" dry --artifacts "$tmp/dotdot.tar.gz"
refused "an absolute member" "has an absolute path" dry --artifacts "$tmp/absolute.tar.gz"
refused "a symlink member" "bundle member 'kernel' is not a regular file (type 'l')" dry --artifacts "$tmp/symlink.tar.gz"
refused "a hard link member" "bundle member 'kernel' is not a regular file (type 'h')" dry --artifacts "$tmp/hardlink.tar.gz"
refused "an unknown member" "bundle member 'extra' is not part of a launch bundle" dry --artifacts "$tmp/unknown.tar.gz"
refused "a duplicate member" "bundle member 'cmdline' appears more than once" dry --artifacts "$tmp/duplicate.tar.gz"
refused "a directory member" "is not a regular file (type 'd')" dry --artifacts "$tmp/directory.tar.gz"
head -c 1000 "$bundle" >"$tmp/truncated.tar.gz"
refused "a truncated archive" "is not a valid tar.gz" dry --artifacts "$tmp/truncated.tar.gz"
check "no hostile member escaped" test ! -e "$tmp/evil" -a ! -e /tmp/evil

# Squashfs bundles (records export --format squashfs): the same members
# at the image's root boot exactly as the tar.gz; anything else is refused.
make_squashfs() { # make_squashfs DIR OUT
    mksquashfs "$1" "$2" -noappend -no-xattrs -all-root -mkfs-time 0 -all-time 0 \
        -no-progress -quiet >/dev/null
}
sq_src=$tmp/sq-src
mkdir "$sq_src"
cp -- "${MEMBERS[@]/#/$src/}" "$sq_src/"
make_squashfs "$sq_src" "$tmp/bundle.sqfs"
cmd=()
if dry --artifacts "$tmp/bundle.sqfs" >"$tmp/dry-sq.out" 2>"$tmp/dry-sq.err"; then
    ok "a squashfs bundle boots (dry run)"
else
    cat "$tmp/dry-sq.err"
    fail "a squashfs bundle boots (dry run)"
fi
parse_command "$tmp/dry-sq.out"
check "--artifacts squashfs: -append equals the bundle's cmdline" \
    [ "$(arg_after -append)" = "$(cat "$src/cmdline")" ]
check "--artifacts squashfs: id-block is the bundle's" \
    [ "$(snp_prop id-block)" = "$(base64 -w0 "$src/id-block.bin")" ]
check "--artifacts squashfs: -initrd is the bundle's initrd" same_bytes "$(arg_after -initrd)" "$src/initrd"
rm -rf -- "$(dirname "$(arg_after -kernel)")"
for kind in symlink extra missing subdir; do
    d=$tmp/sq-$kind
    cp -a -- "$sq_src" "$d"
    case $kind in
        symlink) rm -- "$d/kernel"; ln -s /etc/passwd "$d/kernel" ;;
        extra) echo x >"$d/extra" ;;
        missing) rm -- "$d/id-auth.bin" ;;
        subdir) mkdir "$d/A" ;;
    esac
    make_squashfs "$d" "$tmp/$kind.sqfs"
done
refused "squashfs: a symlink member" "bundle member 'kernel' is not a regular file (type 'l')" dry --artifacts "$tmp/symlink.sqfs"
refused "squashfs: an unknown member" "bundle member 'extra' is not part of a launch bundle" dry --artifacts "$tmp/extra.sqfs"
refused "squashfs: a member is missing" "bundle member 'id-auth.bin' is missing" dry --artifacts "$tmp/missing.sqfs"
refused "squashfs: a directory" "bundle member 'A' is not a regular file (type 'd')" dry --artifacts "$tmp/subdir.sqfs"
head -c 4096 "$tmp/bundle.sqfs" >"$tmp/truncated.sqfs"
refused "squashfs: a truncated image" "is not a valid squashfs image" dry --artifacts "$tmp/truncated.sqfs"

bad=$tmp/bad
variant() { # variant NAME: copy of the sources, to be changed
    rm -rf "$bad"
    cp -r "$src" "$bad"
}
variant; head -c 95 "$src/id-block.bin" >"$bad/id-block.bin"; make_bundle "$bad" "$tmp/b.tar.gz"
refused "a short ID block" '"id-block.bin" is 95 bytes, must be exactly 96' dry --artifacts "$tmp/b.tar.gz"
variant; write_config "$bad" '.kernel_hashes = false'; make_bundle "$bad" "$tmp/b.tar.gz"
refused "kernel_hashes false" "launch-config.json field \`kernel_hashes\` is invalid" dry --artifacts "$tmp/b.tar.gz"
variant; write_config "$bad" '.vcpu_type = "Skylake-Server"'; make_bundle "$bad" "$tmp/b.tar.gz"
refused "an unknown vCPU model" "launch-config.json field \`vcpu_type\` is invalid: unknown vCPU type" dry --artifacts "$tmp/b.tar.gz"
variant; write_config "$bad" '.guest_policy = "0x30000,debug=on"'; make_bundle "$bad" "$tmp/b.tar.gz"
refused "a policy that would inject QEMU options" "launch-config.json field \`guest_policy\` is invalid" dry --artifacts "$tmp/b.tar.gz"
variant; write_config "$bad" '.extra = 1'; make_bundle "$bad" "$tmp/b.tar.gz"
refused "an unknown config field" "launch-config.json is malformed: unknown field \`extra\`" dry --artifacts "$tmp/b.tar.gz"
variant; printf 'root=/dev/vda\000init=/bin/sh' >"$bad/cmdline"; make_bundle "$bad" "$tmp/b.tar.gz"
refused "a NUL in the cmdline" "the cmdline cannot be launched: it contains a NUL byte" dry --artifacts "$tmp/b.tar.gz"

mkdir -p "$tmp/oldqemu"
printf '#!/bin/sh\necho "QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)"\n' >"$tmp/oldqemu/qemu-system-x86_64"
chmod +x "$tmp/oldqemu/qemu-system-x86_64"
refused "QEMU 8.2 on PATH" "is version 8.2; SEV-SNP guests (the sev-snp-guest object) need QEMU >= 9.1" \
    env PATH="$tmp/oldqemu:$PATH" "$script" --hda "$hda" --artifacts "$bundle" --dry-run
refused "QEMU 8.2 on PATH, real launch" "need QEMU >= 9.1" \
    env PATH="$tmp/oldqemu:$PATH" SNPGUARD_HOST_ROOT="$tmp/host-ok" "$script" --hda "$hda" --artifacts "$bundle"

mkdir -p "$tmp/host-nokvm"
fake_host "$tmp/host-snp-off" N $((0x12)) $((51 | (1 << 6)))
fake_host "$tmp/host-nosev" Y $((0x12)) $((51 | (1 << 6))) no-sev
fake_host "$tmp/host-cpuid" Y $((0x2)) $((51 | (1 << 6)))
rm -f "$tmp/fake-qemu.argv"
refused "no kvm_amd" "kvm_amd is not loaded" env SNPGUARD_HOST_ROOT="$tmp/host-nokvm" "$script" --hda "$hda" --artifacts "$bundle" --qemu "$fakebin/fake-qemu"
refused "SEV-SNP disabled in KVM" "SEV-SNP is disabled in KVM" env SNPGUARD_HOST_ROOT="$tmp/host-snp-off" "$script" --hda "$hda" --artifacts "$bundle" --qemu "$fakebin/fake-qemu"
refused "no /dev/sev" "/dev/sev is missing" env SNPGUARD_HOST_ROOT="$tmp/host-nosev" "$script" --hda "$hda" --artifacts "$bundle" --qemu "$fakebin/fake-qemu"
refused "CPUID without SEV-SNP" "CPUID 0x8000001F reports no SEV-SNP" env SNPGUARD_HOST_ROOT="$tmp/host-cpuid" "$script" --hda "$hda" --artifacts "$bundle" --qemu "$fakebin/fake-qemu"
check "QEMU never ran for a refused host" [ ! -e "$tmp/fake-qemu.argv" ]

check "refused runs leave no extracted files behind" [ -z "$(leftovers)" ]

rc=0
"$script" --hda "$hda" --artifacts "$bundle" --from-partition --dry-run >/dev/null 2>&1 || rc=$?
check "--artifacts with --from-partition is a usage error (exit 2)" [ "$rc" = 2 ]

# --- --from-partition ---------------------------------------------------------------

part=$tmp/embedded.qcow2
src_all=()
src_nokernel=()
for m in "${MEMBERS[@]}"; do
    src_all+=("$src/$m")
    [ "$m" = kernel ] || src_nokernel+=("$src/$m")
done
qemu-img create -q -f qcow2 "$part" 128M
guestfish --format=qcow2 -a "$part" <<EOF
run
part-init /dev/sda gpt
part-add /dev/sda p 2048 43007
part-add /dev/sda p 43008 -34
part-set-name /dev/sda 2 LAUNCH_ARTIFACTS
mkfs ext4 /dev/sda1 label:cloudimg-rootfs
mkfs ext4 /dev/sda2 label:LAUNCH_ARTIFACTS
mount /dev/sda2 /
mkdir /A
mkdir /B
copy-in ${src_all[*]} /A
ln-s A /artifacts
EOF
"$script" --hda "$part" --from-partition --dry-run --cbitpos 51 --reduced-phys-bits 1 \
    >"$tmp/dry3.out" 2>"$tmp/dry3.err" || { cat "$tmp/dry3.err"; fail "--from-partition --dry-run exits 0"; }
parse_command "$tmp/dry3.out"
hda_saved=$hda
hda=$part
check_command "--from-partition --dry-run" 51 1
hda=$hda_saved
check "--from-partition names the slot it read" grep -q "read slot A of the LAUNCH_ARTIFACTS partition" "$tmp/dry3.err"
rm -rf -- "$(dirname "$(arg_after -kernel)")"

# Switch to slot B, which has a symlink for its kernel.
guestfish --format=qcow2 -a "$part" <<EOF
run
mount /dev/sda2 /
copy-in ${src_nokernel[*]} /B
ln-s ../A/kernel /B/kernel
rm /artifacts
ln-s B /artifacts
EOF
refused "--from-partition: a symlink in the active slot" "active slot /B has no regular file kernel" \
    "$script" --hda "$part" --from-partition --dry-run --cbitpos 51 --reduced-phys-bits 1
refused "--from-partition: no LAUNCH_ARTIFACTS partition" "has no LAUNCH_ARTIFACTS partition" \
    "$script" --hda "$hda" --from-partition --dry-run --cbitpos 51 --reduced-phys-bits 1

check "the partition refusals leave no extracted files behind" [ -z "$(leftovers)" ]

printf '%s passed, %s failed\n' "$passed" "$failed"
[ "$failed" = 0 ]
