#!/usr/bin/env bash
# The Debian packages in DIR (`make test-deb` builds them from the debug
# build): exactly snpguard and cockpit-snpguard; together they hold every
# file `make install` lays out, each in exactly one package, and nothing
# else but their documentation and lintian overrides; the units and the
# D-Bus activation file name a daemon that is in the package; the
# production agent; the maintainer scripts create the user before its
# directories and do not enable the service; the dependencies; the
# version is the workspace's.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "deb-package: $*" >&2; exit 1; }

dir="${1:?usage: tests/deb-package.sh DIR (the packages)}"
[ -d "$dir" ] || fail "$dir: no such directory; run make test-deb"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || fail "no version in the workspace's Cargo.toml"
changelog_version=$(dpkg-parsechangelog -S Version)
[ "$changelog_version" = "$version" ] \
    || fail "debian/changelog is at $changelog_version, the workspace at $version: add a changelog entry (dch -v $version)"

shopt -s nullglob
debs=("$dir"/*.deb)
names=$(for d in "${debs[@]}"; do basename "$d"; done | sort | tr '\n' ' ')
want_names="cockpit-snpguard_${version}_all.deb snpguard_${version}_amd64.deb "
[ "$names" = "$want_names" ] || fail "packages in $dir: '$names', expected '$want_names'"
main="$dir/snpguard_${version}_amd64.deb"
cockpit="$dir/cockpit-snpguard_${version}_all.deb"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# 1. The files: the union of the packages is `make install`'s tree
# (stand-in binaries, as tests/install-tree.sh), with the units under
# /lib/systemd/system (Debian 12's debhelper looks for them there) and
# the manual pages compressed; each file in one package only.
# shellcheck source=tests/lib/install-stand-ins.sh
. tests/lib/install-stand-ins.sh
install_with_stand_ins "$scratch" "$scratch/tree" UNITDIR=/lib/systemd/system
want=$(cd "$scratch/tree" && find . -type f -printf '/%P\n' \
    | sed -E 's|^(/usr/share/man/.*)$|\1.gz|' | sort)
list() { dpkg-deb --fsys-tarfile "$1" | tar -t | sed -e 's|^\./|/|' -e '/\/$/d' \
    | grep -v -e '^/usr/share/doc/' -e '^/usr/share/lintian/overrides/' | sort; }
list "$main" > "$scratch/main.files"
list "$cockpit" > "$scratch/cockpit.files"
both=$(comm -12 "$scratch/main.files" "$scratch/cockpit.files")
[ -z "$both" ] || fail "in both packages: $both"
got=$(sort "$scratch/main.files" "$scratch/cockpit.files")
if [ "$want" != "$got" ]; then
    diff <(printf '%s\n' "$want") <(printf '%s\n' "$got") >&2 || true
    fail "the packages' files differ from make install's tree (< make install, > packages)"
fi
# The whole listing first: grep -q stopping early would fail the pipe.
main_tree=$(dpkg-deb --fsys-tarfile "$main" | tar -t)
grep -qx './etc/snpguard/snpguardd.toml.d/' <<<"$main_tree" \
    || fail "snpguard does not ship /etc/snpguard/snpguardd.toml.d/ (an operator writes drop-ins there before the first start)"
grep '^\./etc/.*[^/]$' <<<"$main_tree" \
    && fail "snpguard ships files in /etc (the configuration is the operator's)"
grep -q '^/usr/share/cockpit/' "$scratch/main.files" && fail "snpguard holds Cockpit files"
grep -qv '^/usr/share/cockpit/snpguard/' "$scratch/cockpit.files" && fail "cockpit-snpguard holds more than the page"
for pkg in snpguard cockpit-snpguard; do
    f="$dir/${pkg}_${version}_$([ "$pkg" = snpguard ] && echo amd64 || echo all).deb"
    contents=$(dpkg-deb -c "$f")
    for doc in copyright changelog.gz; do
        grep -q "\./usr/share/doc/$pkg/$doc\$" <<<"$contents" || fail "$pkg has no /usr/share/doc/$pkg/$doc"
    done
done

# 2. What systemd and the bus start is in the package.
mkdir -p "$scratch/main"
dpkg-deb -x "$main" "$scratch/main"
root="$scratch/main"
exec_of() { sed -n "s/^$2=//p" "$root$1" | head -n 1; }
daemon=$(exec_of /lib/systemd/system/snpguardd.service ExecStart)
[ -x "$root$daemon" ] || fail "snpguardd.service: ExecStart=$daemon is not in the package"
activation=$(exec_of /usr/share/dbus-1/system-services/org.snpguard.SnpGuard1.service Exec)
[ "$activation" = "$daemon" ] \
    || fail "D-Bus activation runs Exec=$activation, the unit ExecStart=$daemon"
grep -qx 'SystemdService=snpguardd.service' "$root/usr/share/dbus-1/system-services/org.snpguard.SnpGuard1.service" \
    || fail "the D-Bus activation file does not hand over to snpguardd.service"
# The daemon and the CLI are the real builds, not stand-ins.
for b in /usr/libexec/snpguard/snpguardd /usr/bin/snpguardctl /usr/lib/snpguard/snpguard-agent; do
    head -c 4 "$root$b" | grep -q 'ELF' || fail "$b is not an ELF binary"
done
! grep -qaF 'built with the SIMULATED report source' "$root/usr/lib/snpguard/snpguard-agent" \
    || fail "the packaged agent is the simulator build"

# 3. Maintainer scripts: the user exists before tmpfiles gives it
# /var/lib/snpguard; the units are registered but not enabled (the
# operator enables the service after configuring it).
mkdir -p "$scratch/control"
dpkg-deb -e "$main" "$scratch/control"
postinst="$scratch/control/postinst"
[ -f "$postinst" ] || fail "snpguard has no postinst"
sysusers_line=$(grep -n 'systemd-sysusers.*snpguard\.conf' "$postinst" | head -n 1 | cut -d: -f1 || true)
tmpfiles_line=$(grep -n 'systemd-tmpfiles.*--create.*snpguard\.conf' "$postinst" | head -n 1 | cut -d: -f1 || true)
[ -n "$sysusers_line" ] || fail "postinst does not run systemd-sysusers snpguard.conf"
[ -n "$tmpfiles_line" ] || fail "postinst does not run systemd-tmpfiles --create snpguard.conf"
[ "$sysusers_line" -lt "$tmpfiles_line" ] \
    || fail "postinst runs systemd-tmpfiles (line $tmpfiles_line) before systemd-sysusers (line $sysusers_line)"
# debhelper's "don't enable" snippet: a unit is re-enabled only when it
# was installed and enabled before (an upgrade); its "enable" snippet
# enables on first install (was-enabled is true for a unit it never saw).
for unit in snpguardd.service snpguardd.socket; do
    grep -q "deb-systemd-helper update-state '$unit'" "$postinst" \
        || fail "postinst does not register $unit with deb-systemd-helper"
    grep -q "deb-systemd-helper debian-installed '$unit'" "$postinst" \
        || fail "postinst enables $unit on installation; the operator enables snpguardd after configuring it"
done
grep -q 'was-enabled defaults to true' "$postinst" \
    && fail "postinst enables a unit on installation; the operator enables snpguardd after configuring it"
grep -q 'deb-systemd-helper purge' "$scratch/control/postrm" || fail "postrm does not purge the units' state"
grep -q '^    rmdir /etc/snpguard' "$scratch/control/postrm" \
    || fail "postrm does not remove the empty /etc/snpguard on purge"
grep -q 'rm -rf\|/var/lib/snpguard' <(grep -v '^#' "$scratch/control/postrm") \
    && fail "postrm deletes files or the state in /var/lib/snpguard (the only copy of the sealed disk keys)"

# polkitd answers the daemon (user snpguard, not root) about its callers
# only for actions that name that user as their owner.
user=$(sed -n 's/^User=//p' units/snpguardd.service)
policy=dbus/org.snpguard.SnpGuard1.policy
actions=$(grep -c '<action id=' "$policy")
owned=$(grep -c "<annotate key=\"org.freedesktop.policykit.owner\">unix-user:$user</annotate>" "$policy")
if [ "$actions" -eq 0 ] || [ "$owned" != "$actions" ]; then
    fail "$policy: $owned of $actions actions name unix-user:$user as org.freedesktop.policykit.owner; polkitd refuses the daemon's CheckAuthorization for the others"
fi

# 4. Dependencies.
depends=$(dpkg-deb -f "$main" Depends)
for dep in dbus polkitd qemu-utils libguestfs0 'systemd | systemd-standalone-sysusers'; do
    grep -qF "$dep" <<<"$depends" || fail "snpguard does not depend on $dep (Depends: $depends)"
done
recommends=$(dpkg-deb -f "$main" Recommends)
for rec in linux-image-amd64 openssh-client squashfs-tools; do
    grep -qF "$rec" <<<"$recommends" || fail "snpguard does not recommend $rec (Recommends: $recommends)"
done
cdepends=$(dpkg-deb -f "$cockpit" Depends)
grep -qF 'cockpit-bridge' <<<"$cdepends" || fail "cockpit-snpguard does not depend on cockpit-bridge"
grep -qF "snpguard (>= $version)" <<<"$cdepends" || fail "cockpit-snpguard does not depend on snpguard (>= $version)"
crecommends=$(dpkg-deb -f "$cockpit" Recommends)
for rec in cockpit-ws cockpit-system; do
    grep -qF "$rec" <<<"$crecommends" || fail "cockpit-snpguard does not recommend $rec (the web service and the shell it opens in)"
done

echo "deb-package: ok ($(wc -l < "$scratch/main.files") files in snpguard, $(wc -l < "$scratch/cockpit.files") in cockpit-snpguard)"
