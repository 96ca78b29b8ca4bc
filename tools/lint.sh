#!/usr/bin/env bash
# The lint gate: ruff's rules, ruff's formatting, and mypy --strict (settings: pyproject.toml
# for ruff, setup.cfg for mypy). Needs the lint extra: pip install -e '.[lint]'.
# Runs every check even when one fails, then exits non-zero if any did.
set -uo pipefail

cd "$(dirname "$0")/.."

status=0
run() {
    echo "lint: $*"
    "$@" || status=1
}

run ruff check --output-format concise .
run ruff format --check .
run mypy
[ "$status" -eq 0 ] && echo "lint: all checks passed" || echo "lint: FAILED" >&2
exit "$status"
