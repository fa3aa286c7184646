"""Accuracy at every compression level, next to baselines, as rows, JSON, CSV and a plot."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from lcs import accel, atomic
from lcs.checkpoint import Checkpoint
from lcs.results import read_accuracy
from lcs.subspace.levels import same_alpha
from lcs.subspace.model import SubspaceModel


@dataclass
class LevelResult:
    model: str  # label of the model the row belongs to (the subspace or a baseline)
    alpha: float
    level: str
    keep: float
    width: float
    bits: int | None
    accuracy: float
    zero_fraction: float  # fraction of zero conv/linear weights actually used (stem/head included)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def accuracy(model: SubspaceModel, data: Dataset, batch_size: int = 512, device: torch.device | None = None) -> float:
    """Top-1 accuracy in float32, on `device` (default: where the model is). Correct answers are
    counted on the device and read once."""
    model.eval()
    device = device or next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    for x, y in accel.loader(data, batch_size, device=device):
        x, y = accel.to_device((x, y), device)
        correct += (model(x).argmax(1) == y).sum()
        total += len(y)
    return int(correct) / max(total, 1)


def evaluate_levels(model: SubspaceModel, data: Dataset, alphas: Sequence[float], label: str = "lcs",
                    device: torch.device | None = None) -> list[LevelResult]:
    rows = []
    for alpha in alphas:
        level = model.set_alpha(alpha)
        acc = accuracy(model, data, device=device)
        stats = model.compression_stats()
        rows.append(LevelResult(label, level.alpha, level.label(), level.keep, level.width, level.bits, acc,
                                stats["zero_fraction"]))
    model.set_alpha(model.cmap.alpha_range[1])
    return rows


def baseline_levels(ckpt: Checkpoint, alphas: Sequence[float]) -> list[float]:
    """A model trained for one level is only meaningful at that level."""
    if ckpt.config.train.method == "fixed":
        return [ckpt.config.train.fixed_alpha]
    return list(alphas)


def label_of(ckpt: Checkpoint, path: str | Path) -> str:
    t, s = ckpt.config.train, ckpt.config.subspace
    if t.method == "fixed":
        return f"fixed ({ckpt.model.cmap.level(t.fixed_alpha).label()})"
    if t.method == "us":
        return "US-Nets (shared BN)"
    return f"LCS+{'L' if s.shape == 'line' else 'P'} ({Path(path).stem})"


def accuracy_table(metrics: dict, eval_results: str | Path | None) -> list[dict]:
    """Rows {alpha, accuracy} known for this checkpoint: `lcs eval --out DIR` results (DIR/results.json, the main
    subspace's rows, i.e. those of the first model listed) or evaluation rows kept in the checkpoint's metrics."""
    if eval_results is not None:
        return read_accuracy(eval_results)
    rows = metrics.get("eval")  # written by lcs.train at the end of training
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and "alpha" in r and "accuracy" in r]


def accuracy_at(table: list[dict], alpha: float) -> float | None:
    return next((float(r["accuracy"]) for r in table if same_alpha(r["alpha"], alpha)), None)


# -- output ---------------------------------------------------------------------------------------

def rows_to_json(rows: list[LevelResult]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)


def rows_to_csv(rows: list[LevelResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(rows[0]).keys()) if rows else ["model"])
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return buf.getvalue()


def plot(rows: list[LevelResult], family: str, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xlabel = {"unstructured": "sparsity of compressed layers (%)", "structured": "width factor",
              "quantization": "bits"}[family]

    def x_of(r: LevelResult) -> float:
        if family == "unstructured":
            return 100.0 * (1.0 - r.keep)
        if family == "structured":
            return r.width
        return float(r.bits or 32)

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    models = list(dict.fromkeys(r.model for r in rows))
    for i, name in enumerate(models):
        pts = sorted((x_of(r), 100 * r.accuracy) for r in rows if r.model == name)
        xs, ys = zip(*pts)
        color = f"C{i}"  # one color per model, whether it is drawn as a curve or a single marker
        if len(pts) == 1:
            ax.scatter(xs, ys, marker="s", s=36, color=color, label=name, zorder=3)
        else:
            ax.plot(xs, ys, marker="o", ms=4, lw=2 if i == 0 else 1.4, color=color, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"accuracy vs {family} compression")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
