#!/usr/bin/env bash
# Everything CI runs: lint, then the repo and service test suites beside every
# Molecule scenario. Set PAYCORE_SCENARIOS="common edge" to run only those
# scenarios, PAYCORE_SKIP_MOLECULE=1 to run none, PAYCORE_MOLECULE_JOBS=N to
# run N scenarios at a time (default 2).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
failed=()

# pytest exits 5 when it collected nothing: that is a failure of the suite here,
# because each suite below is expected to hold tests. Output goes to
# .cache/pytest-<name>.log; the last line says how the suite ended.
run_pytest() {
    local name=$1; shift
    local start=$SECONDS
    "$@" > ".cache/pytest-$name.log" 2>&1
    local rc=$?
    if ((rc == 0)); then
        echo "    pytest $name passed in $((SECONDS - start)) s: $(tail -n 1 ".cache/pytest-$name.log")"
    else
        ((rc == 5)) && echo "pytest collected no tests in $name" >> ".cache/pytest-$name.log"
        echo "    pytest $name FAILED in $((SECONDS - start)) s; last lines of its log:"
        tail -n 60 ".cache/pytest-$name.log" | sed 's/^/    | /'
    fi
    return "$rc"
}

echo "==> lint"
scripts/lint.sh || failed+=(lint)

# The test suites run beside the Molecule scenarios (the longest part), so
# the whole run takes about as long as the slowest scenario plus set-up.
echo "==> pytest: the repo and service suites, in the background"
(
    rc=0
    run_pytest repo pytest -q -p no:cacheprovider tests || rc=$((rc | 1))
    if [[ -f service/pyproject.toml ]]; then
        run_pytest service bash -c 'cd service && exec pytest -q -p no:cacheprovider' || rc=$((rc | 2))
    fi
    exit "$rc"
) > .cache/pytest-summary.log 2>&1 &
pytest_pid=$!

# The recap lines of a scenario's check step (--check on the converged hosts)
# that report changes. Molecule runs that step but does not fail on changes.
check_mode_changes() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" \
        | awk '/➜ check: Executing/,/➜ check: Executed/' | grep -E ': ok=[0-9]+ +changed=[1-9]'
}

# One Molecule scenario, its output kept in .cache/molecule-<scenario>.log.
run_scenario() {
    local scenario=$1 start=$SECONDS log=.cache/molecule-$1.log changes
    if ! molecule test -s "$scenario" > "$log" 2>&1; then
        echo "    molecule $scenario FAILED in $((SECONDS - start)) s; last lines of its log:"
        tail -60 "$log" | sed 's/^/    | /'
        return 1
    fi
    if changes=$(check_mode_changes "$log"); then
        echo "    molecule $scenario FAILED: --check on the converged hosts reported changes:"
        sed 's/^/    | /' <<< "$changes"
        return 1
    fi
    echo "    molecule $scenario passed in $((SECONDS - start)) s"
}

# Waits for any running scenario and records its result.
reap_one() {
    local done_pid rc
    wait -n -p done_pid "${!running[@]}"  # not the background pytest job
    rc=$?
    if ((rc == 0)); then passed=$((passed + 1)); else failed+=("molecule:${running[$done_pid]}"); fi
    unset "running[$done_pid]"
}

if [[ -z ${PAYCORE_SKIP_MOLECULE:-} ]]; then
    # A scenario with a SKIP file is left out of the default run, and says why.
    if [[ -z ${PAYCORE_SCENARIOS:-} ]]; then
        # The longest scenarios start first, so the short ones fill in beside them.
        longest_first="site postgresql ledger_service alerting network"
        others=$(find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' \
            | xargs -n1 basename | sort | grep -vxF -f <(tr ' ' '\n' <<< "$longest_first"))
        scenarios=
        for name in $longest_first $others; do
            if [[ -f molecule/$name/SKIP ]]; then
                echo "    molecule $name SKIPPED: $(head -1 "molecule/$name/SKIP")"
            elif [[ -f molecule/$name/molecule.yml ]]; then
                scenarios+=" $name"
            fi
        done
    else
        scenarios=$PAYCORE_SCENARIOS
    fi
    jobs=${PAYCORE_MOLECULE_JOBS:-2}
    echo "==> molecule: $(wc -w <<< "$scenarios") scenarios, $jobs at a time"
    declare -A running=()
    passed=0
    # Scenarios are independent (own containers and networks), so a small pool
    # runs them side by side; most of their time is spent waiting on apt and systemd.
    for scenario in $scenarios; do
        while ((${#running[@]} >= jobs)); do reap_one; done
        run_scenario "$scenario" &
        running[$!]=$scenario
    done
    while ((${#running[@]})); do reap_one; done
    echo "molecule: $passed passed, $(( $(wc -w <<< "$scenarios") - passed )) failed"
fi

echo "==> pytest results"
wait "$pytest_pid"
case $? in
    0) ;;
    1) failed+=(pytest:repo) ;;
    2) failed+=(pytest:service) ;;
    *) failed+=(pytest:repo pytest:service) ;;
esac
cat .cache/pytest-summary.log

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all checks passed"
