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
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$root/requirements-dev.txt"
if [[ -f $root/service/pyproject.toml ]]; then
    "$venv/bin/pip" install -q -e "$root/service[test]"
fi
echo "$wanted" > "$stamp"
