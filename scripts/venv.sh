#!/usr/bin/env bash
# Creates the project virtualenv (.venv) with the pinned controller tooling and
# the ledger service; reinstalls only when a requirements file changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv
stamp=$venv/.paycore-requirements
wanted=$(cat "$root/requirements-dev.txt" "$root/service/pyproject.toml" 2>/dev/null | sha256sum)

if [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$wanted" ]]; then
    exit 0
fi
echo "==> installing the controller tooling into .venv (a few minutes the first time)"
log=$root/.cache/venv-install.log
mkdir -p "$root/.cache"
install_into_venv() {
    "$venv/bin/pip" install "$@" >> "$log" 2>&1 \
        || { echo "pip install $* failed; last lines of $log:" >&2; tail -30 "$log" >&2; exit 1; }
}
: > "$log"
python3 -m venv "$venv"
install_into_venv -r "$root/requirements-dev.txt"
if [[ -f $root/service/pyproject.toml ]]; then
    install_into_venv -e "$root/service[test]"
fi
echo "$wanted" > "$stamp"
