#!/usr/bin/env bash
# Sets everything up and runs the demo on bundled data: train an LCS+L subspace on MNIST-5k,
# evaluate it at every sparsity level beside a baseline trained for 90 % sparsity, and plot.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/scripts/setup.sh" | tail -n 1)
out=${1:-$root/out/demo}
mkdir -p "$out"
export PATH="$venv/bin:$PATH"
lcs train --data mnist5k --family unstructured --shape line --epochs 12 -o "$out/lcs-line.safetensors"
lcs train --data mnist5k --family unstructured --method fixed --alpha sparsity=0.9 --epochs 12 -o "$out/fixed-90.safetensors"
lcs eval "$out/lcs-line.safetensors" --baseline "$out/fixed-90.safetensors" --out "$out/eval"
echo "demo: plot at $out/eval/accuracy.png"
