#!/usr/bin/env bash
# Runs ShellCheck on every shell script of the repository: scripts/,
# tests/ and tests/lib/, and the hooks installed into guests
# (agent/kernel-hooks/). Hooks run
# under /bin/sh (dash on Debian), so they are checked as POSIX sh.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v shellcheck >/dev/null 2>&1 \
    || { echo "check-shell: shellcheck is missing (make deps installs it)" >&2; exit 1; }

scripts=()
for f in scripts/*.sh tests/*.sh tests/lib/*.sh tests/guest/*.sh tests/host/*.sh agent/kernel-hooks/*; do
    [ -f "$f" ] && scripts+=("$f")
done
[ "${#scripts[@]}" -gt 0 ] || { echo "check-shell: no scripts found" >&2; exit 1; }

# Every hook must say it is a POSIX sh script and be executable.
for f in agent/kernel-hooks/*; do
    [ -f "$f" ] || continue
    head -n1 "$f" | grep -qx '#!/bin/sh' || { echo "check-shell: $f must start with #!/bin/sh" >&2; exit 1; }
    [ -x "$f" ] || { echo "check-shell: $f is not executable" >&2; exit 1; }
done

# -x: the tests source their shared helpers (tests/lib/), checked with
# them.
shellcheck -x --severity=style "${scripts[@]}"
echo "check-shell: ok (${#scripts[@]} scripts)"
