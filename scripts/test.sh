#!/usr/bin/env bash
# Everything CI runs: lint, then the repo and service test suites beside every
# Molecule scenario, then a table of where the time went. Set
# PAYCORE_SCENARIOS="common edge" to run only those scenarios,
# PAYCORE_SKIP_MOLECULE=1 to run none, PAYCORE_MOLECULE_JOBS=N to run N
# scenarios at a time (default 3: most of a scenario is waiting on apt, systemd and drills, not CPU).
#
# A developer's inner loop on one scenario (nothing else runs):
#   test.sh --scenario NAME                the scenario's whole sequence
#   test.sh --scenario NAME --converge     create and converge, hosts left up
#   test.sh --scenario NAME --verify-only  its tests, against the hosts left up
#   test.sh --scenario NAME --destroy      remove them
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/mitogen.sh
source scripts/mitogen.sh
failed=()
start_all=$SECONDS
# The CI time budget on a quiet 2-core machine (README.md, Development).
budget=${PAYCORE_TEST_BUDGET_SECONDS:-1500}
timings=.cache/timings.tsv

usage() { sed -n '8,12s/^# \{0,1\}//p' "$0" >&2; exit 2; }
only_scenario= step=
while (($#)); do
    case $1 in
        --scenario) [[ $# -ge 2 ]] || usage; only_scenario=$2; shift 2 ;;
        --converge|--verify-only|--destroy) step=${1#--}; shift ;;
        *) usage ;;
    esac
done
[[ -z $step || -n $only_scenario ]] || usage
if [[ -n $only_scenario && ! -f molecule/$only_scenario/molecule.yml ]]; then
    echo "no Molecule scenario named $only_scenario (see molecule/)" >&2
    exit 2
fi

# Prefixes each line with the unix time it arrived (the timing table reads it).
stamp_lines() {
    local line
    while IFS= read -r line; do printf '%(%s)T %s\n' -1 "$line"; done
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$timings"; }

# A few lines that say why a failed part failed, kept in .cache/why-<part>.txt
# and printed again at the very end of the run, where a CI log's tail shows
# them: the Molecule step that failed, then pytest's failed tests, else
# Ansible's errors, else Molecule's own error (an idempotence failure names
# its tasks), else the log's tail.
why_failed() {
    local part=$1 log=$2 plain step reasons
    # Without colours, time stamps and the frame Molecule draws around Ansible's output.
    plain=$(sed 's/\x1b\[[0-9;]*m//g; s/^[0-9]\{10\} //; s/^ *│ //' "$log")
    step=$(grep -E '➜ [a-z_]+: Executed: Failed' <<< "$plain" | head -n 1)
    # pytest's summary lines, joined again where Molecule's frame wrapped them.
    reasons=$(awk '/^(FAILED|ERROR)( [^ ]|$)/ { if (line) print line; line = $0; next }
                   line && /^  / { sub(/^ +/, " "); line = line $0; next }
                   { if (line) print line; line = "" }
                   END { if (line) print line }' <<< "$plain" | grep '::' | tail -n 8)
    # and the first failure's own lines (pytest's "E   ..."), which the summary cuts short.
    [[ -z $reasons ]] || reasons+=$'\n'$(grep -E '^E  ' <<< "$plain" | head -n 6)
    # Ansible's error: its message, then "Origin: <task file>:<line>".
    [[ -n $reasons ]] || reasons=$(grep -A2 -E '^\[ERROR\]: |^fatal: ' <<< "$plain" | tail -n 8)
    # Molecule's error and the lines that belong to it, up to its next log line.
    [[ -n $reasons ]] || reasons=$(awk '/^[A-Z]+ +/ { keep = /^ERROR / && !/Executed: / }
                                        keep' <<< "$plain" | tail -n 8)
    [[ -n $reasons ]] || reasons=$(tail -n 5 <<< "$plain")
    printf '%s\n' "$step" "$reasons" | sed '/^$/d' | cut -c1-400 > ".cache/why-$part.txt"
}

# pytest exits 5 when it collected nothing: that is a failure of the suite here,
# because each suite below is expected to hold tests. Output goes to
# .cache/pytest-<name>.log; the last line says how the suite ended.
run_pytest() {
    local name=$1; shift
    local start=$SECONDS
    "$@" > ".cache/pytest-$name.log" 2>&1
    local rc=$?
    record pytest "$name" $((SECONDS - start))
    if ((rc == 0)); then
        echo "    pytest $name passed in $((SECONDS - start)) s: $(tail -n 1 ".cache/pytest-$name.log")"
    else
        ((rc == 5)) && echo "pytest collected no tests in $name" >> ".cache/pytest-$name.log"
        echo "    pytest $name FAILED in $((SECONDS - start)) s; last lines of its log:"
        tail -n 60 ".cache/pytest-$name.log" | sed 's/^/    | /'
        why_failed "pytest-$name" ".cache/pytest-$name.log"
    fi
    return "$rc"
}

# The recap lines of a scenario's check step (--check on the converged hosts)
# that report changes. Molecule runs that step but does not fail on changes.
check_mode_changes() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" \
        | awk '/➜ check: Executing/,/➜ check: Executed/' | grep -E ': ok=[0-9]+ +changed=[1-9]'
}

# One Molecule scenario, its output kept in .cache/molecule-<scenario>.log.
run_scenario() {
    local scenario=$1 start=$SECONDS log=.cache/molecule-$1.log changes rc=0
    molecule test -s "$scenario" 2>&1 | stamp_lines > "$log" || rc=$?
    record molecule "$scenario" $((SECONDS - start))
    if ((rc != 0)); then
        echo "    molecule $scenario FAILED in $((SECONDS - start)) s; last lines of its log:"
        tail -60 "$log" | sed 's/^/    | /'
        why_failed "molecule-$scenario" "$log"
        return 1
    fi
    if changes=$(check_mode_changes "$log"); then
        echo "    molecule $scenario FAILED: --check on the converged hosts reported changes:"
        sed 's/^/    | /' <<< "$changes"
        echo "--check reported changes: $changes" > ".cache/why-molecule-$scenario.txt"
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

print_timings() {
    .venv/bin/python scripts/timings.py .cache "$budget" $((SECONDS - start_all))
}

print_why() {
    local file part
    for file in .cache/why-*.txt; do
        [[ -f $file ]] || continue
        part=${file#.cache/why-}
        part=${part%.txt}
        echo "==> why $part failed (its log: .cache/$part.log)"
        sed 's/^/    | /' "$file"
    done
}

: > "$timings"
rm -f .cache/why-*.txt

# One scenario, one step: the inner loop, no lint or test suites.
if [[ -n $step ]]; then
    case $step in
        converge) exec molecule converge -s "$only_scenario" ;;
        verify-only) exec molecule verify -s "$only_scenario" ;;
        destroy) exec molecule destroy -s "$only_scenario" ;;
    esac
fi
if [[ -n $only_scenario ]]; then
    run_scenario "$only_scenario"
    rc=$?
    print_timings
    print_why
    exit "$rc"
fi

echo "==> lint"
lint_start=$SECONDS
scripts/lint.sh || failed+=(lint)
record lint - $((SECONDS - lint_start))

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

if [[ -z ${PAYCORE_SKIP_MOLECULE:-} ]]; then
    # A scenario with a SKIP file is left out of the default run, and says why.
    if [[ -z ${PAYCORE_SCENARIOS:-} ]]; then
        # The longest scenarios start first, so the short ones fill in beside them.
        longest_first="database_ha network site postgresql ledger_service alerting"
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
    jobs=${PAYCORE_MOLECULE_JOBS:-3}
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

print_timings
print_why
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all checks passed"
