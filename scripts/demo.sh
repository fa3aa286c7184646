#!/usr/bin/env bash
# Sets everything up, then runs the main job end to end on bundled data and the host-simulated board:
#   train an LCS+L subspace (unstructured sparsity) on MNIST-5k, and a baseline trained for 90 % sparsity
#   -> accuracy at every level beside the baseline (table, JSON, CSV, plot)
#   -> firmware for host-sim (the microcontroller firmware compiled for this PC, on a pseudo-terminal)
#   -> deploy it: upload, device-confirmed weights, self-test of every level against the artifact's references
#   -> replay the example battery trace with the firmware in the loop: summary table, timeline CSV and plot,
#      and the comparison with every policy, every fixed level and the offline optimum
#   -> the same trace on a width subspace, whose levels differ in cost, with a battery small enough to bind.
# Output folder: $1, default ./out/demo. About 3-5 minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/scripts/setup.sh" | tail -n 1)
out=${1:-$root/out/demo}
mkdir -p "$out"
export PATH="$venv/bin:$PATH"
levels=keep=0.05,keep=0.1,keep=0.25,keep=0.5,keep=1

lcs train --data mnist5k --family unstructured --shape line --epochs 20 -o "$out/lcs-line.safetensors"
lcs train --data mnist5k --family unstructured --method fixed --alpha sparsity=0.9 --epochs 20 \
    -o "$out/fixed-90.safetensors"
lcs eval "$out/lcs-line.safetensors" --baseline "$out/fixed-90.safetensors" --out "$out/eval"
lcs build "$out/lcs-line.safetensors" --target host-sim --levels "$levels" -o "$out/lcs-host-sim.lcsa"
lcs info "$out/lcs-host-sim.lcsa"
lcs deploy "$out/lcs-host-sim.lcsa" --sim host-sim
lcs simulate --trace "$root/examples/traces/battery_discharge.csv" --artifact "$out/lcs-host-sim.lcsa" \
    --sim host-sim --policy battery --compare --out "$out/simulate"
lcs simulate --trace "$root/examples/traces/battery_discharge.csv" --profile "$root/examples/traces/host_profile.json" \
    --capacity-mwh 300 --policy plan --policy-option until_s=36000 --compare --out "$out/compare"
echo "demo: accuracy plot $out/eval/accuracy.png, simulation plot $out/simulate/timeline.png," \
    "comparisons $out/simulate/compare.png $out/compare/compare.png"
