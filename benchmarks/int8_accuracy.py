"""Accuracy of the int8 levels (the numpy integer reference, bit-identical to the device's kernels) against the
fp32 levels of the same LCS checkpoints: the small CNN (GroupNorm, the default) on MNIST-5k.

    PYTHONPATH=. python benchmarks/int8_accuracy.py [--checkpoints A.safetensors,B.safetensors] [--out FILE]

Without --checkpoints it trains LCS+L with the default recipe (`lcs train`: 20 epochs, mnist5k) for the
unstructured, quantization and structured families into a temporary directory first (about 30 s each on one
core). Activation scales are calibrated per level at build time on the first 256 training images (max |x| of
each tensor over the float forward of that level) and stored with the level's graph: nothing is calibrated at
inference. The quantization family's b-bit activation grids become int8 (the finer grid); its b-bit weights are
re-gridded to int8 per output channel."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcs import checkpoint  # noqa: E402
from lcs.atomic import write_text  # noqa: E402
from lcs.data import load_data  # noqa: E402
from lcs.errors import LcsError  # noqa: E402
from lcs.int8.level import int8_accuracy, int8_level  # noqa: E402

CALIBRATION = 256
TOLERANCE = 0.5  # points (issue 15)


def _train(family: str, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "lcs", "train", "--data", "mnist5k", "--family", family, "--shape", "line",
                    "--threads", "1", "--device", "cpu", "--no-progress", "-o", str(out)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return out


def evaluate(path: Path) -> dict:
    ck = checkpoint.load(path)
    data = load_data(ck.config.data)
    calib = torch.stack([data.train[i][0] for i in range(CALIBRATION)])
    xt = torch.stack([data.test[i][0] for i in range(len(data.test))])
    yt = np.array([int(data.test[i][1]) for i in range(len(data.test))])
    model = ck.model
    rows = []
    for alpha in model.cmap.eval_alphas:
        graph = int8_level(model, alpha, calib)
        level = model.set_alpha(alpha)
        model.eval()
        with torch.no_grad():
            fp32 = float((model(xt).argmax(1).numpy() == yt).mean())
        int8 = int8_accuracy(graph, xt, yt)
        rows.append({"alpha": round(float(alpha), 4), "level": level.label(), "fp32": fp32, "int8": int8,
                     "delta_points": round(100 * (int8 - fp32), 2)})
        print(f"  {level.label():>14s}  fp32 {100 * fp32:5.1f}  int8 {100 * int8:5.1f}  "
              f"({rows[-1]['delta_points']:+.1f})")
    worst = max(abs(r["delta_points"]) for r in rows)
    return {"checkpoint": path.name, "family": ck.config.subspace.family, "shape": ck.config.subspace.shape,
            "norm": ck.config.model.norm, "levels": rows, "max_abs_delta_points": worst, "met": worst <= TOLERANCE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default="", help="comma-separated; empty: train LCS+L per family first")
    ap.add_argument("--families", default="unstructured,quantization,structured")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_accuracy.json"))
    args = ap.parse_args()
    missing = [p for p in args.checkpoints.split(",") if p and not Path(p).is_file()]
    if missing:
        sys.exit(f"error: no checkpoint at {', '.join(missing)}")
    t0 = time.time()
    result = {"data": "mnist5k: 4000 train / 1000 test", "model": "small-cnn, width 16, GroupNorm",
              "calibration": f"first {CALIBRATION} training images, per level, at build time",
              "tolerance_points": TOLERANCE, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = ([Path(p) for p in args.checkpoints.split(",")] if args.checkpoints else
                 [_train(f, Path(tmp) / f"{f}-line.safetensors") for f in args.families.split(",")])
        for path in paths:
            print(path.name)
            try:
                result["runs"].append(evaluate(path))
            except LcsError as e:
                sys.exit(f"error: {path}: {e}")
    result["met"] = all(r["met"] for r in result["runs"])
    result["seconds"] = round(time.time() - t0, 1)
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"within {TOLERANCE} points everywhere: {result['met']}; wrote {args.out}")


if __name__ == "__main__":
    main()
