#!/usr/bin/env bash
# Set up on first use, lint (ruff), type-check (mypy), then run the test tiers (pytest markers,
# tests/helpers/tiers.py):
#
#   scripts/test.sh                        every tier in turn: unit, integration, deploy (CI's)
#   scripts/test.sh unit                   one tier; also integration, deploy, all
#   scripts/test.sh unit,integration       several, in that order
#   scripts/test.sh integration -k resume  arguments after the tier go to pytest
#   scripts/test.sh tests/test_faults.py   every tier, of those tests
#   scripts/test.sh -m "not deploy" -x     an -m of your own: one pytest run, as given
#
# Each tier is its own pytest run; a tier with no test to run (pytest's exit code 5, e.g.
# after -k) passes. Every tier runs even if one fails; the script exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
TIERS=(unit integration deploy)

tiers=("${TIERS[@]}")
if [[ $# -gt 0 && $1 =~ ^(all|unit|integration|deploy)(,(unit|integration|deploy))*$ ]]; then
  [[ $1 == all ]] || IFS=, read -r -a tiers <<<"$1"
  shift
fi
own_marks=false
for arg in "$@"; do
  [[ $arg == -m* ]] && own_marks=true
done

scripts/setup.sh
source scripts/flwr-env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # files and settings: [tool.mypy] in pyproject.toml

if $own_marks; then
  rc=0
  .venv/bin/python -m pytest "$@" || rc=$?
  [[ $rc == 5 ]] && { echo "no tests selected"; rc=0; }
  exit $rc
fi

summary=()
failed=0
for tier in "${tiers[@]}"; do
  echo "=== tier: $tier ==="
  start=$SECONDS
  rc=0
  .venv/bin/python -m pytest -m "$tier" --durations=10 "$@" || rc=$?  # the slowest ten, for the tier budget
  seconds=$((SECONDS - start))
  case $rc in
    0) summary+=("$tier: passed (${seconds} s)") ;;
    5) summary+=("$tier: no tests selected (${seconds} s)") ;;
    *) summary+=("$tier: FAILED, pytest exit code $rc (${seconds} s)"); failed=1 ;;
  esac
done
echo "=== tiers ==="
printf '%s\n' "${summary[@]}"
exit $failed
