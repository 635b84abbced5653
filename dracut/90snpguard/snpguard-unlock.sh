#!/bin/sh
# dracut initqueue/settled hook of the snpguard module: attests to the
# SnpGuard daemon and maps the encrypted root volume with the key it
# releases. Sourced by dracut's initqueue each round until the root device
# exists, so it runs the agent once and never calls exit.
#
# Fail closed: if the agent does not unlock the root volume, this boot ends
# here with the machine powered off; there is no fall-through to a shell
# (and the command line carries rd.shell=0 rd.emergency=poweroff for every
# later failure, see docs/initrd.md).

snpguard_power_off() {
    echo "snpguard: $*; powering off" >/dev/console 2>/dev/null
    sync 2>/dev/null
    poweroff -f 2>/dev/null
    echo o >/proc/sysrq-trigger 2>/dev/null
    while :; do
        sleep 60 2>/dev/null || read -r _ </dev/console
    done
}

snpguard_unlock() {
    snpguard_agent=/usr/lib/snpguard/snpguard-agent
    for m in dm-mod dm-crypt qemu_fw_cfg sev-guest tsm; do
        modprobe -q "$m" 2>/dev/null || :
    done
    [ -x "$snpguard_agent" ] || snpguard_power_off "$snpguard_agent is missing from the initrd"
    "$snpguard_agent" unlock --config /etc/snpguard/agent.toml >/dev/console 2>&1
    snpguard_rc=$?
    [ "$snpguard_rc" -eq 0 ] || snpguard_power_off "snpguard-agent unlock exited with status $snpguard_rc"
    : >/run/snpguard.unlocked
}

[ -e /run/snpguard.unlocked ] || snpguard_unlock
