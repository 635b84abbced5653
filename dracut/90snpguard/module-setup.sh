#!/bin/bash
# dracut module "snpguard": the SnpGuard agent, its configuration, the
# pinned CA, the kernel modules the unlock needs, and an initqueue hook
# that attests and maps the encrypted root volume before dracut waits for
# the root device. Installed as /usr/lib/dracut/modules.d/90snpguard and
# enabled by /etc/dracut.conf.d/snpguard.conf (`snpguardctl convert`
# writes both). See docs/initrd.md for the kernel command line it needs.

snpguard_agent=/usr/lib/snpguard/snpguard-agent
snpguard_config=/etc/snpguard/agent.toml

# An initrd that cannot unlock the root file system must never be
# installed: stop dracut itself (module-setup.sh runs inside dracut's shell).
snpguard_fail() {
    dfatal "snpguard: $*; the initrd would not unlock the root file system, so it is not built"
    exit 1
}

# Always part of the initrd once installed: a converted guest cannot boot
# without it.
check() {
    return 0
}

# dracut's network module (systemd-networkd when there is no
# NetworkManager) brings up the interface from ip=/rd.neednet=1.
depends() {
    echo network
    return 0
}

# Device mapper and the cipher; SEV-SNP guest reports (sev-guest, and
# configfs-tsm, module name tsm); virtio and common NICs; qemu_fw_cfg for
# the simulated platform. Modules built in or absent from this kernel are
# skipped: the agent names what it lacks at boot.
installkernel() {
    hostonly='' instmods dm-mod dm-crypt aes aesni-intel xts sha256 \
        sev-guest tsm \
        virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e \
        af_packet qemu_fw_cfg
}

install() {
    local agent="${dracutsysrootdir-}$snpguard_agent"
    local config="${dracutsysrootdir-}$snpguard_config"
    local ca

    [[ -x $agent ]] || snpguard_fail "$agent is missing or not executable (reinstall it with snpguardctl convert)"
    [[ -f $config ]] || snpguard_fail "$config is missing (reinstall it with snpguardctl convert)"
    "$agent" check-config --config "$config" >&2 \
        || snpguard_fail "$agent check-config rejected $config (see the message above)"

    # The pinned CA: the top-level `ca = "PATH"` (before the first [table]).
    ca=$(awk '
        /^[[:space:]]*\[/ { exit }
        /^[[:space:]]*ca[[:space:]]*=/ {
            sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
        }' "$config")
    [[ -n $ca ]] || snpguard_fail "$config names no CA file (ca = \"/etc/snpguard/ca.pem\")"
    [[ -f ${dracutsysrootdir-}$ca ]] || snpguard_fail "the CA file $ca named in $config is missing"

    # The agent is static: a plain copy, no libraries to follow.
    inst_simple "$snpguard_agent" || snpguard_fail "copying $snpguard_agent into the initrd failed"
    inst_simple "$snpguard_config" || snpguard_fail "copying $snpguard_config into the initrd failed"
    inst_simple "$ca" || snpguard_fail "copying $ca into the initrd failed"
    inst_multiple -o poweroff sync sleep
    # Marks the mapping ready for systemd and links /dev/mapper/<name>
    # (the guest has no dmsetup, so no device-mapper udev rules).
    # shellcheck disable=SC2154 # moddir is set by dracut
    inst_rules "$moddir/55-snpguard-dm.rules"

    # Runs in the initqueue once udev has settled, before the root device
    # it maps is waited for (the initqueue's finished condition).
    # shellcheck disable=SC2154 # moddir is set by dracut
    inst_hook initqueue/settled 50 "$moddir/snpguard-unlock.sh"
}
