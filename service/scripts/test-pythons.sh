#!/usr/bin/env bash
# Runs the service test suite once per Python version (default: 3.11 3.12 3.13),
# each in its own virtualenv under .cache/pythons/ at the repo root, and ends
# with one line per version: passed, FAILED, MISSING (no interpreter on this
# machine) or NOT INSTALLED (pip could not install the service's test extras).
#
#   service/scripts/test-pythons.sh [VERSION...] [-- PYTEST_ARGS...]
#
# An interpreter is looked for as pythonX.Y on PATH (pyenv shims that answer
# "not installed" do not count), then /usr/bin/pythonX.Y, ~/.pyenv/versions/X.Y*/
# and $PAYCORE_PYTHONS_DIRS (colon-separated prefixes holding bin/pythonX.Y);
# the first one that runs and can make a venv is used.
# Installation tries offline first (pip --no-index: pip's configured
# find-links, plus $PAYCORE_WHEELHOUSE if set), then pip's configured indexes
# (PyPI by default); PAYCORE_PYTHONS_OFFLINE=1 forbids the second step. A venv
# is reused while service/pyproject.toml is unchanged.
# Exit status: 0 if every version found ran green, 1 if any failed or could
# not be installed, and 0 when versions are only missing unless
# PAYCORE_PYTHONS_REQUIRE_ALL=1. Not part of CI (its time budget): run it
# before a release or after touching anything version-sensitive.
set -uo pipefail
service=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$service/.." && pwd)
cache=$root/.cache/pythons
mkdir -p "$cache"

versions=() pytest_args=()
while (($#)); do
    if [[ $1 == -- ]]; then
        shift
        pytest_args=("$@")
        break
    fi
    [[ $1 =~ ^3\.[0-9]+$ ]] || { sed -n '2,8s/^# \{0,1\}//p' "$0" >&2; exit 2; }
    versions+=("$1")
    shift
done
((${#versions[@]})) || versions=(3.11 3.12 3.13)
((${#pytest_args[@]})) || pytest_args=(-q -p no:cacheprovider)

# The interpreter for version $1, printed; nothing if the machine has none.
find_python() {
    local version=$1 candidate dir
    local -a candidates=() dirs=("$HOME"/.pyenv/versions/"$version"*) extra=()
    candidate=$(command -v "python$version" 2>/dev/null) && candidates+=("$candidate")
    [[ -x /usr/bin/python$version ]] && candidates+=("/usr/bin/python$version")
    [[ -n ${PAYCORE_PYTHONS_DIRS:-} ]] && IFS=: read -ra extra <<< "$PAYCORE_PYTHONS_DIRS"
    for dir in "${dirs[@]}" "${extra[@]}"; do
        [[ -x $dir/bin/python$version ]] && candidates+=("$dir/bin/python$version")
    done
    local probe='import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2], sys.executable)'
    local found
    for candidate in "${candidates[@]}"; do
        # A pyenv shim exists for every version pyenv knows of: ask it. The
        # interpreter behind a shim is printed, so the venv does not depend on
        # pyenv's version selection.
        found=$("$candidate" -c "$probe" 2>/dev/null) || continue
        if [[ ${found%% *} == "$version" ]]; then
            echo "${found#* }"
            return 0
        fi
    done
    return 1
}

# Creates or reuses the venv for version $1 with interpreter $2; prints how
# the service was installed (reused, offline, from the index) on stdout.
prepare_venv() {
    local version=$1 python=$2 venv=$cache/$1 log=$cache/$1-install.log
    local wanted stamp=$cache/$1/.paycore-pyproject
    wanted=$( (cat "$service/pyproject.toml"; "$python" -VV) | sha256sum)
    if [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$wanted" ]]; then
        echo "venv reused"
        return 0
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv" > "$log" 2>&1 || return 1
    local -a offline=(--no-index)
    [[ -n ${PAYCORE_WHEELHOUSE:-} ]] && offline+=(--find-links "$PAYCORE_WHEELHOUSE")
    if "$venv/bin/pip" install "${offline[@]}" -e "$service[test]" >> "$log" 2>&1; then
        echo "installed offline"
    elif [[ -n ${PAYCORE_PYTHONS_OFFLINE:-} ]]; then
        echo "offline install failed and PAYCORE_PYTHONS_OFFLINE is set" >> "$log"
        return 1
    elif "$venv/bin/pip" install -e "$service[test]" >> "$log" 2>&1; then
        # pip says "Processing <path>" for a local file, "Downloading" for the network.
        echo "not installable offline; installed through pip's configured index," \
            "$(grep -c '^ *Downloading ' "$log") distributions downloaded"
    else
        return 1
    fi
    echo "$wanted" > "$stamp"
}

# The oldest version the service supports (pyproject's requires-python ">=X.Y").
floor=$(sed -n 's/^requires-python = ">=\(3\.[0-9]*\)"$/\1/p' "$service/pyproject.toml")
below_floor() {
    [[ -n $floor ]] && (( ${1#3.} < ${floor#3.} ))
}

declare -A result
failed=0 missing=0
for version in "${versions[@]}"; do
    echo "==> Python $version"
    if below_floor "$version"; then
        echo "    the service requires Python >= $floor"
        result[$version]="SKIPPED: below the service's requires-python (>= $floor)"
        continue
    fi
    if ! python=$(find_python "$version"); then
        echo "    no Python $version on this machine (PATH, ~/.pyenv/versions, \$PAYCORE_PYTHONS_DIRS)"
        result[$version]="MISSING: no interpreter found"
        missing=$((missing + 1))
        continue
    fi
    echo "    interpreter: $python ($("$python" -V 2>&1))"
    if ! how=$(prepare_venv "$version" "$python"); then
        echo "    could not install the service with its test extras; last lines of" \
            "$cache/$version-install.log:"
        tail -n 15 "$cache/$version-install.log" | sed 's/^/    | /'
        result[$version]="NOT INSTALLED: pip failed (offline wheels missing and no index reachable?)"
        failed=$((failed + 1))
        continue
    fi
    echo "    $how"
    log=$cache/$version-pytest.log
    start=$SECONDS
    (cd "$service" && exec "$cache/$version/bin/python" -m pytest "${pytest_args[@]}") > "$log" 2>&1
    rc=$?
    summary=$(tail -n 1 "$log")
    if ((rc == 0)); then
        result[$version]="passed in $((SECONDS - start)) s: $summary ($("$python" -V 2>&1))"
    else
        echo "    FAILED; last lines of $log:"
        tail -n 40 "$log" | sed 's/^/    | /'
        result[$version]="FAILED (exit $rc) in $((SECONDS - start)) s: $summary"
        failed=$((failed + 1))
    fi
done

echo "==> summary"
for version in "${versions[@]}"; do
    echo "    Python $version: ${result[$version]}"
done
if ((failed)); then
    exit 1
fi
if ((missing)) && [[ -n ${PAYCORE_PYTHONS_REQUIRE_ALL:-} ]]; then
    exit 1
fi
exit 0
