#!/usr/bin/env bash
# Sets everything up (apt, venv, lcs) and runs the whole test suite: unit, slow, TVM, QEMU and DDP tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/scripts/setup.sh" | tail -n 1)
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
