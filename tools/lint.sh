#!/usr/bin/env bash
# The lint gate: ruff's rules, ruff's formatting, mypy --strict (settings: pyproject.toml
# for ruff, setup.cfg for mypy), and vermin for Python 3.9. Needs the lint extra:
# pip install -e '.[lint]'.
# Python 3.9 is kept three ways: ruff refuses newer syntax (target-version), mypy newer
# standard-library names in ecs_ipam and tools (python_version), vermin newer names and
# keywords (zip(strict=), tomllib, typing.Self...) in the tests too. What no reader sees
# (socket.timeout is no TimeoutError before 3.10) the test run on 3.9 in .ci/run finds.
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
run vermin -q --target=3.9- --violations --no-tips ecs_ipam tools tests
[ "$status" -eq 0 ] && echo "lint: all checks passed" || echo "lint: FAILED" >&2
exit "$status"
