#!/usr/bin/env bash
# Installs ExecuTorch (requirements/executorch.txt) for the latency benchmark and prints its directory on the last
# line: a --target install outside the checkout, keyed by a hash of the pins and the Python version, added to the
# benchmark worker's sys.path after the venv's own packages.
#   bash scripts/setup-executorch.sh [PYTHON]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LCS_CACHE_DIR:-$HOME/.cache/lcs}
python=${1:-${PYTHON:-python3}}
pins="$root/requirements/executorch.txt"
key=$( (cat "$pins"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
dir="$cache/executorch-$key"
if [ ! -f "$dir/.complete" ]; then
  echo "setup-executorch: installing into $dir (one time, ~20 MB)" >&2
  mkdir -p "$cache"
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  "$python" -m pip install -q --no-deps --target "$tmp" -r "$pins" >&2
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
fi
echo "$dir"
