#!/usr/bin/env bash
# Sets everything up (apt, venv, lcs) and runs the whole test suite: unit, slow, TVM, QEMU and DDP tests.
# Two pytest-xdist workers take whole files (module fixtures are built once), the slowest files first
# (tests/conftest.py orders them; --no-loadscope-reorder keeps that order). LCS_TEST_WORKERS=0 runs in one process.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/scripts/setup.sh" | tail -n 1)
cd "$root"
workers=${LCS_TEST_WORKERS:-2}
parallel=()
[ "$workers" = 0 ] || parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
exec "$venv/bin/python" -m pytest "${parallel[@]}" "$@"
