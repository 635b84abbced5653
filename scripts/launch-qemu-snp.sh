#!/usr/bin/env bash
# Starts a registered SnpGuard guest as an AMD SEV-SNP VM under QEMU/KVM,
# from its launch-artifacts.tar.gz (or its squashfs image) or from the
# LAUNCH_ARTIFACTS partition that `snpguardctl embed` wrote into the image.
# A local launch of `snpguardctl launch-config` (no encryption, no server)
# starts the same way, with a NO CONFIDENTIALITY warning.
#
# The launch is exactly the one the daemon measured: the bundle's
# firmware, kernel, initrd and command line (byte for byte, nothing
# appended), its vCPU count and model, its guest policy, ID block and ID
# auth block, with kernel-hashes=on. Any change there changes the launch
# digest and the daemon refuses the guest.
#
# Exit status: 0 QEMU ran (or --dry-run printed the command) and exited
# 0; 1 a prerequisite or the bundle was refused; 2 usage error; otherwise
# QEMU's own exit status.
set -euo pipefail
# Byte semantics everywhere: lengths, comparisons and quoting.
export LC_ALL=C

prog=launch-qemu-snp

usage() {
    cat <<'EOF'
Usage: launch-qemu-snp.sh --hda IMAGE
           (--artifacts launch-artifacts.tar.gz | --from-partition)
           [--memory 4G] [--dry-run] [options]

Starts the guest in IMAGE as an SEV-SNP VM (QEMU >= 9.1 with KVM) from
its launch bundle, exactly as registered with snpguardd (or as
`snpguardctl launch-config` signed a local launch: no confidentiality).

  --hda IMAGE          guest disk image (qcow2 or raw)
  --artifacts FILE     launch-artifacts.tar.gz from `snpguardctl register`
                       or `snpguardctl records export`, or the squashfs
                       image of `records export --format squashfs`
                       (a file or a block device; read with unsquashfs),
                       or a local launch's bundle (`launch-config
                       --out-bundle`: no confidentiality)
  --from-partition     read the active slot of IMAGE's LAUNCH_ARTIFACTS
                       partition (written by `snpguardctl embed`; read-only,
                       through guestfish)
  --memory SIZE        guest memory, e.g. 4096M or 4G (default 4G)
  --nic SPEC           QEMU -nic for the guest's network, which the agent
                       needs to reach snpguardd
                       (default user,model=virtio-net-pci)
  --cbitpos N          C-bit position (default: CPUID 0x8000001F EBX[5:0])
  --reduced-phys-bits N
                       physical address bits lost to encryption
                       (default: CPUID 0x8000001F EBX[11:6])
  --qemu BIN           QEMU binary (default qemu-system-x86_64)
  --workdir DIR        extract the bundle into DIR (created, must be empty)
                       and keep it; default: a private temporary directory,
                       removed on exit (kept after a successful --dry-run)
  --dry-run            check the bundle, print the QEMU command, start
                       nothing; needs neither root nor SEV-SNP hardware
  -h, --help           this help

Prerequisites (checked): a host kernel with SEV-SNP enabled in KVM
(/sys/module/kvm_amd/parameters/sev_snp = Y), /dev/kvm and /dev/sev
(run as root or with read/write access to both), QEMU >= 9.1, jq,
snpguardctl (on PATH, or SNPGUARD_CTL=PATH; it checks the bundle), and
for --from-partition guestfish (libguestfs-tools).
EOF
}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
usage_error() {
    printf '%s: %s (see --help)\n' "$prog" "$*" >&2
    exit 2
}
note() { printf '%s: %s\n' "$prog" "$*" >&2; }

# The bundle's members (protocol/src/bundle/mod.rs).
MEMBERS=(launch-config.json firmware.fd kernel initrd cmdline id-block.bin id-auth.bin)
# Limits while extracting, as snpguard_protocol::bundle::ExtractLimits::default()
# (what lands on disk is bounded before `snpguardctl bundle check` reads
# it).
MAX_MEMBER=$((1 << 30))
MAX_TOTAL=$((4 << 30))
MAX_CONFIG=$((64 << 10))
MIN_QEMU_MAJOR=9
MIN_QEMU_MINOR=1
# Where the host's devices and sysfs are looked up; only the tests set it.
HOST_ROOT=${SNPGUARD_HOST_ROOT:-}

hda=
artifacts=
from_partition=false
memory=4G
nic=user,model=virtio-net-pci
cbitpos=
reduced_phys_bits=
qemu="qemu-system-x86_64"
workdir=
dry_run=false

need_arg() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a value"; fi
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --hda) need_arg "$@"; hda=$2; shift 2 ;;
        --artifacts) need_arg "$@"; artifacts=$2; shift 2 ;;
        --from-partition) from_partition=true; shift ;;
        --memory) need_arg "$@"; memory=$2; shift 2 ;;
        --nic) need_arg "$@"; nic=$2; shift 2 ;;
        --cbitpos) need_arg "$@"; cbitpos=$2; shift 2 ;;
        --reduced-phys-bits) need_arg "$@"; reduced_phys_bits=$2; shift 2 ;;
        --qemu) need_arg "$@"; qemu=$2; shift 2 ;;
        --workdir) need_arg "$@"; workdir=$2; shift 2 ;;
        --dry-run) dry_run=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

[ -n "$hda" ] || usage_error "--hda IMAGE is required"
if [ -n "$artifacts" ] && $from_partition; then
    usage_error "give either --artifacts or --from-partition, not both"
fi
[ -n "$artifacts" ] || $from_partition || usage_error "give --artifacts FILE or --from-partition"
[[ $memory =~ ^[1-9][0-9]{0,6}[MG]$ ]] || usage_error "--memory '$memory' is not like 4096M or 4G"
for v in cbitpos reduced_phys_bits; do
    [ -z "${!v}" ] || [[ ${!v} =~ ^[0-9]{1,2}$ ]] || usage_error "--${v//_/-} '${!v}' is not a number"
done
if [ -n "$cbitpos" ] && [ -n "$reduced_phys_bits" ]; then :; elif [ -n "$cbitpos$reduced_phys_bits" ]; then
    usage_error "--cbitpos and --reduced-phys-bits go together"
fi

# --- the image --------------------------------------------------------------

[ -e "$hda" ] || die "image $hda does not exist"
[ -f "$hda" ] || [ -b "$hda" ] || die "image $hda is neither a regular file nor a block device"
[ -r "$hda" ] || die "image $hda is not readable (run as root?)"
case "$hda" in /*) ;; *) hda=$PWD/$hda ;; esac
# The format is stated, never probed by QEMU: a raw image whose guest
# wrote a qcow2 header must stay raw.
if [ "$(head -c 4 -- "$hda" | od -An -tx1 | tr -d ' \n')" = 514649fb ]; then
    hda_format=qcow2
else
    hda_format=raw
fi

# --- tools ------------------------------------------------------------------

command -v jq >/dev/null 2>&1 || die "jq is not installed (apt-get install jq)"
ctl=${SNPGUARD_CTL:-snpguardctl}
command -v "$ctl" >/dev/null 2>&1 \
    || die "$ctl not found; the bundle is checked by snpguardctl (install SnpGuard, or set SNPGUARD_CTL)"
command -v "$qemu" >/dev/null 2>&1 \
    || die "$qemu not found; install QEMU >= $MIN_QEMU_MAJOR.$MIN_QEMU_MINOR (Debian 13: qemu-system-x86; Debian 12: from bookworm-backports)"
qemu_version=$("$qemu" --version 2>/dev/null | head -n 1) || true
if [[ $qemu_version =~ ^QEMU\ emulator\ version\ ([0-9]+)\.([0-9]+) ]]; then
    qmaj=${BASH_REMATCH[1]}
    qmin=${BASH_REMATCH[2]}
else
    die "cannot tell the version of $qemu (it printed '${qemu_version}')"
fi
if [ "$qmaj" -lt "$MIN_QEMU_MAJOR" ] || { [ "$qmaj" -eq "$MIN_QEMU_MAJOR" ] && [ "$qmin" -lt "$MIN_QEMU_MINOR" ]; }; then
    die "$qemu is version $qmaj.$qmin; SEV-SNP guests (the sev-snp-guest object) need QEMU >= $MIN_QEMU_MAJOR.$MIN_QEMU_MINOR"
fi

# --- the host (not for --dry-run) -------------------------------------------

check_host() {
    local param="$HOST_ROOT/sys/module/kvm_amd/parameters/sev_snp" dev value
    [ -e "$HOST_ROOT/sys/module/kvm_amd" ] \
        || die "kvm_amd is not loaded: this host cannot run SEV-SNP guests (AMD EPYC with SNP enabled in the BIOS, then modprobe kvm_amd)"
    [ -r "$param" ] \
        || die "$param is missing: the host kernel has no SEV-SNP support in KVM (Linux >= 6.11 with CONFIG_KVM_AMD_SEV)"
    value=$(head -c 16 -- "$param")
    case "$value" in
        Y | y | 1) ;;
        *) die "SEV-SNP is disabled in KVM ($param = $value): enable SEV-SNP in the BIOS (SNP memory coverage, RMP table) and load kvm_amd with sev_snp=1" ;;
    esac
    for dev in /dev/kvm /dev/sev; do
        [ -e "$HOST_ROOT$dev" ] || die "$dev is missing (is the ccp driver loaded for /dev/sev, kvm_amd for /dev/kvm?)"
        if [ ! -r "$HOST_ROOT$dev" ] || [ ! -w "$HOST_ROOT$dev" ]; then
            die "no read/write access to $dev: run as root (sudo)"
        fi
    done
}

# CPUID 0x8000001F (AMD memory encryption): EAX bit 4 = SEV-SNP, EBX[5:0]
# = C-bit position, EBX[11:6] = physical address bits lost. Read through
# the cpuid driver (the file offset is the leaf); sets cpuid_eax/ebx.
read_cpuid() {
    local dev="$HOST_ROOT/dev/cpu/0/cpuid" words
    if [ ! -r "$dev" ] && [ -z "$HOST_ROOT" ] && [ "$(id -u)" -eq 0 ]; then
        modprobe cpuid 2>/dev/null || true
    fi
    [ -r "$dev" ] || return 1
    words=$(dd if="$dev" bs=16 count=1 skip=$((0x8000001F)) iflag=skip_bytes 2>/dev/null \
        | od -An -tu4 -v) || return 1
    read -r cpuid_eax cpuid_ebx _ <<<"$words" || return 1
    [[ ${cpuid_eax:-} =~ ^[0-9]+$ && ${cpuid_ebx:-} =~ ^[0-9]+$ ]]
}

if ! $dry_run; then
    check_host
fi
if [ -z "$cbitpos" ]; then
    if read_cpuid && [ $((cpuid_eax & 0x10)) -ne 0 ] && [ $((cpuid_ebx & 0x3f)) -ne 0 ]; then
        cbitpos=$((cpuid_ebx & 0x3f))
        reduced_phys_bits=$(((cpuid_ebx >> 6) & 0x3f))
    elif $dry_run; then
        cbitpos=51
        reduced_phys_bits=1
        note "no SEV-SNP in CPUID 0x8000001F here (or no cpuid driver); assuming cbitpos=51 reduced-phys-bits=1 as on SNP-capable EPYC; set --cbitpos/--reduced-phys-bits"
    elif [ -n "${cpuid_eax:-}" ]; then
        die "CPUID 0x8000001F reports no SEV-SNP on this CPU (EAX=$(printf '%#x' "$cpuid_eax")); enable SEV-SNP in the BIOS"
    else
        die "cannot read CPUID 0x8000001F from $HOST_ROOT/dev/cpu/0/cpuid (modprobe cpuid, run as root) or pass --cbitpos and --reduced-phys-bits"
    fi
fi

# --- a private directory for the bundle --------------------------------------

# Only a directory this script created is ever removed, never --workdir.
temp_dir=
keep_workdir=false
gf_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$gf_pid" ]; then
        GUESTFISH_PID=$gf_pid guestfish --remote -- exit >/dev/null 2>&1 || true
    fi
    if ! $keep_workdir && [ -n "$temp_dir" ]; then
        rm -rf -- "$temp_dir"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "$workdir" ]; then
    if [ -e "$workdir" ]; then
        if [ ! -d "$workdir" ] || [ -L "$workdir" ]; then
            die "--workdir $workdir is not a directory"
        fi
        [ -z "$(ls -A -- "$workdir")" ] || die "--workdir $workdir is not empty"
    else
        mkdir -m 0700 -- "$workdir" || die "cannot create --workdir $workdir"
    fi
    workdir=$(cd -- "$workdir" && pwd -P)
else
    temp_dir=$(mktemp -d "${TMPDIR:-/tmp}/snpguard-launch.XXXXXXXX") \
        || die "cannot create a temporary directory"
    workdir=$temp_dir
fi
chmod 0700 -- "$workdir"

is_member() {
    local m
    for m in "${MEMBERS[@]}"; do [ "$1" = "$m" ] && return 0; done
    return 1
}

member_limit() {
    if [ "$1" = launch-config.json ]; then echo "$MAX_CONFIG"; else echo "$MAX_MEMBER"; fi
}

# One listed entry of a bundle archive (tar or squashfs): NAME, its type
# letter as ls prints it, its SIZE and anything left on the line. Counts
# it into the caller's `seen` (an associative array) and `total`.
check_entry() {
    local name=$1 type=$2 size=$3 rest=$4
    [ "$type" = - ] || die "bundle member '$name' is not a regular file (type '$type')"
    [ -z "$rest" ] || die "bundle member '$name $rest' is not one of the launch bundle's names"
    is_member "$name" || die "bundle member '$name' is not part of a launch bundle"
    [ -z "${seen[$name]:-}" ] || die "bundle member '$name' appears more than once"
    seen[$name]=1
    [[ $size =~ ^[0-9]{1,12}$ ]] || die "bundle member '$name' has an unreadable size '$size'"
    [ "$size" -le "$(member_limit "$name")" ] || die "bundle member '$name' is larger than $(member_limit "$name") bytes"
    total=$((total + size))
}

# After the listing: every member there, the total within its limit.
check_all_listed() {
    local m
    [ "$total" -le "$MAX_TOTAL" ] || die "bundle content is larger than $MAX_TOTAL bytes"
    for m in "${MEMBERS[@]}"; do
        [ -n "${seen[$m]:-}" ] || die "bundle member '$m' is missing"
    done
}

# Lists the archive first and refuses anything but the seven known
# members as regular files, each once, within the size limits; then
# extracts exactly those names. The archive is read through one open file
# descriptor, so replacing the path in between changes nothing.
extract_tar() {
    local file=$1 listing perms owner size day time name rest total=0
    local -A seen=()
    [ -f "$file" ] || die "bundle $file is not a regular file"
    exec 3<"$file" || die "cannot open bundle $file"
    if ! listing=$(tar --list --verbose --numeric-owner --quoting-style=escape -z \
        -f /dev/fd/3 2>"$workdir/.tar-errors"); then
        die "bundle $file is not a valid tar.gz: $(tail -n 1 -- "$workdir/.tar-errors")"
    fi
    rm -f -- "$workdir/.tar-errors"
    [ -n "$listing" ] || die "bundle $file is empty"
    while IFS= read -r line; do
        read -r perms owner size day time name rest <<<"$line"
        case "$name" in
            /*) die "bundle member '$name' has an absolute path" ;;
            .. | ../* | */.. | */../*) die "bundle member '$name' has a '..' component" ;;
        esac
        check_entry "$name" "${perms:0:1}" "$size" "$rest"
        : "$owner" "$day" "$time"
    done <<<"$listing"
    check_all_listed
    tar --extract -z -f /dev/fd/3 -C "$workdir" --no-same-owner --no-same-permissions \
        --no-overwrite-dir -- "${MEMBERS[@]}" \
        || die "extracting bundle $file failed"
    exec 3<&-
}

# A squashfs bundle (`snpguardctl records export --format squashfs`):
# listed first like the tar.gz (the seven members at its root as regular
# files, each once, within the limits; the root directory itself aside),
# then exactly those names extracted, through one open file descriptor.
extract_squashfs() {
    local file=$1 listing perms owner size day time name rest total=0 m
    local -A seen=()
    command -v unsquashfs >/dev/null 2>&1 \
        || die "bundle $file is a squashfs image; reading it needs unsquashfs (apt-get install squashfs-tools)"
    exec 3<"$file" || die "cannot open bundle $file"
    if ! listing=$(unsquashfs -lls -no-xattrs /dev/fd/3 2>"$workdir/.sq-errors"); then
        die "bundle $file is not a valid squashfs image: $(tail -n 1 -- "$workdir/.sq-errors")"
    fi
    rm -f -- "$workdir/.sq-errors"
    while IFS= read -r line; do
        read -r perms owner size day time name rest <<<"$line"
        [ "$name" = squashfs-root ] && [ "${perms:0:1}" = d ] && continue
        name=${name#squashfs-root/}
        check_entry "$name" "${perms:0:1}" "$size" "$rest"
        : "$owner" "$day" "$time"
    done < <(grep -v -e '^Parallel unsquashfs' -e '^[0-9]* inodes' -e '^$' <<<"$listing")
    check_all_listed
    unsquashfs -no-xattrs -no-progress -d "$workdir/.squashfs" /dev/fd/3 "${MEMBERS[@]}" \
        >/dev/null 2>"$workdir/.sq-errors" \
        || die "extracting bundle $file failed: $(tail -n 1 -- "$workdir/.sq-errors")"
    rm -f -- "$workdir/.sq-errors"
    for m in "${MEMBERS[@]}"; do
        mv -- "$workdir/.squashfs/$m" "$workdir/$m" || die "extracting bundle $file failed"
        # As tar's --no-same-owner --no-same-permissions: the image's
        # owners and modes are not kept.
        chown -- "$(id -u):$(id -g)" "$workdir/$m" || die "extracting bundle $file failed"
        chmod 0600 -- "$workdir/$m" || die "extracting bundle $file failed"
    done
    rmdir -- "$workdir/.squashfs" || die "bundle $file holds more than the launch bundle's members"
    exec 3<&-
}

# Reads the active slot of the LAUNCH_ARTIFACTS partition: libguestfs
# opens the image read-only in its appliance (nothing is mounted on the
# host; the guest's file systems are untrusted input).
extract_partition() {
    local out fs dev type found="" slot m kind size
    command -v guestfish >/dev/null 2>&1 \
        || die "--from-partition needs guestfish (apt-get install libguestfs-tools)"
    # The forked server keeps stderr open: only stdout is captured.
    out=$(guestfish --listen --ro --format="$hda_format" -a "$hda" 2>"$workdir/.guestfish-errors") \
        || die "guestfish could not open $hda: $(tail -n 1 -- "$workdir/.guestfish-errors")"
    rm -f -- "$workdir/.guestfish-errors"
    [[ $out =~ ^GUESTFISH_PID=([0-9]+)\;\ export\ GUESTFISH_PID$ ]] \
        || die "unexpected answer from guestfish --listen: $out"
    gf_pid=${BASH_REMATCH[1]}
    gf() { GUESTFISH_PID=$gf_pid guestfish --remote -- "$@"; }
    gf run || die "guestfish could not start its appliance for $hda (LIBGUESTFS_BACKEND=direct?)"
    while IFS= read -r fs; do
        dev=${fs%%: *}
        type=${fs#*: }
        [ "$(gf vfs-label "$dev" 2>/dev/null)" = LAUNCH_ARTIFACTS ] || continue
        [ -z "$found" ] || die "$hda has more than one file system labelled LAUNCH_ARTIFACTS"
        [ "$type" = ext4 ] || die "the LAUNCH_ARTIFACTS file system on $hda is $type, not ext4"
        found=$dev
    done < <(gf list-filesystems)
    [ -n "$found" ] || die "$hda has no LAUNCH_ARTIFACTS partition; run 'snpguardctl embed --image $hda --in-bundle launch-artifacts.tar.gz' or use --artifacts"
    gf mount-ro "$found" / || die "cannot mount the LAUNCH_ARTIFACTS file system of $hda read-only"
    [ "$(gf is-symlink /artifacts)" = true ] \
        || die "LAUNCH_ARTIFACTS on $hda has no /artifacts symlink naming the active slot"
    slot=$(gf readlink /artifacts)
    case "$slot" in
        A | B) ;;
        *) die "/artifacts on LAUNCH_ARTIFACTS points to '$slot', not to slot A or B" ;;
    esac
    [ "$(gf is-dir "/$slot")" = true ] || die "active slot /$slot is not a directory"
    for m in "${MEMBERS[@]}"; do
        kind=$(gf is-file "/$slot/$m")
        [ "$kind" = true ] || die "active slot /$slot has no regular file $m"
        size=$(gf filesize "/$slot/$m")
        if [[ ! $size =~ ^[0-9]{1,12}$ ]] || [ "$size" -gt "$(member_limit "$m")" ]; then
            die "/$slot/$m is larger than $(member_limit "$m") bytes"
        fi
        gf download "/$slot/$m" "$workdir/$m" || die "cannot read /$slot/$m from $hda"
    done
    gf exit >/dev/null 2>&1 || true
    gf_pid=
    note "read slot $slot of the LAUNCH_ARTIFACTS partition of $hda"
}

if $from_partition; then
    extract_partition
elif { [ -f "$artifacts" ] || [ -b "$artifacts" ]; } \
    && [ "$(head -c 4 -- "$artifacts" | od -An -tx1 | tr -d ' \n')" = 68737173 ]; then
    extract_squashfs "$artifacts"
else
    extract_tar "$artifacts"
fi

# --- the members, whichever way they came -----------------------------------

# snpguardctl checks them as the library does (snpguard_protocol::bundle::
# check_extracted): each a regular file with one link within its size
# limit, the ID block and auth sizes, no empty firmware, kernel or
# initrd, launch-config.json with exactly its fields (a vCPU model the
# launch can be measured for, a policy that is a number), a command line
# without NUL within the measured maximum. It prints the launch config.
config=$("$ctl" bundle check --dir "$workdir" --json 2>"$workdir/.check-errors") \
    || die "$(sed -e 's/^error: //' -- "$workdir/.check-errors" | tr '\n' ' ')"
rm -f -- "$workdir/.check-errors"
IFS=$'\t' read -r name vcpus vcpu_type policy features measurement no_encryption < <(jq -r \
    '[.name, .vcpus, .vcpu_type, .guest_policy, .guest_features, .measurement,
      (.no_encryption // false)] | @tsv' <<<"$config")

# The command line, byte for byte (checked above: no NUL, bounded).
cmdline_file=$workdir/cmdline
cmdline_size=$(stat -c %s -- "$cmdline_file")
cmdline=
IFS= read -r -d '' cmdline <"$cmdline_file" || true
[ "${#cmdline}" = "$cmdline_size" ] || die "could not read the cmdline faithfully"

id_block=$(base64 -w0 -- "$workdir/id-block.bin")
id_auth=$(base64 -w0 -- "$workdir/id-auth.bin")

# --- the command ----------------------------------------------------------------

args=(
    -enable-kvm
    -machine "q35,confidential-guest-support=sev0,memory-backend=ram1"
    -object "memory-backend-memfd,id=ram1,size=$memory,share=true,prealloc=false"
    -object "sev-snp-guest,id=sev0,cbitpos=$cbitpos,reduced-phys-bits=$reduced_phys_bits,policy=$policy,id-block=$id_block,id-auth=$id_auth,author-key-enabled=on,kernel-hashes=on"
    -cpu "$vcpu_type"
    -smp "$vcpus"
    -m "$memory"
    -bios "$workdir/firmware.fd"
    -kernel "$workdir/kernel"
    -initrd "$workdir/initrd"
    -append "$cmdline"
    -drive "file=${hda//,/,,},if=virtio,format=$hda_format"
    -nic "$nic"
    -nographic
    # The guest's encrypted register state cannot be reset: a reboot is a
    # new launch (and a new attestation), so QEMU exits instead.
    -no-reboot
)

# One word for a POSIX shell: as is when plainly safe, else in single
# quotes (inside which only the quote itself needs care).
shell_quote() {
    if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

note "record $name: measurement $measurement, policy $policy, $vcpus x $vcpu_type, SEV features $features (set by KVM/QEMU; must match the record)"
if [ "$no_encryption" = true ]; then
    note "WARNING: NO CONFIDENTIALITY: $name is a local launch (snpguardctl launch-config of a convert --no-encryption staging directory): its disk is not encrypted and no attestation server knows it. It tests the measured launch only."
fi
if $dry_run; then
    shell_quote "$qemu"
    for a in "${args[@]}"; do
        printf ' '
        shell_quote "$a"
    done
    printf '\n'
    keep_workdir=true
    note "dry run: bundle kept in $workdir for the command above; remove it when done"
    exit 0
fi

# Not exec: the trap removes the extracted bundle when QEMU exits.
status=0
"$qemu" "${args[@]}" || status=$?
exit "$status"
