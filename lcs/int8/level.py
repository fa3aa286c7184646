"""One level of a trained subspace as an int8 graph: the level's plain network (`materialize`), norms folded,
activation ranges calibrated on the checkpoint's own data, and its accuracy measured with the integer
reference (what the device computes, bit for bit)."""

from __future__ import annotations

import numpy as np
import torch

from lcs.int8.from_torch import from_torch
from lcs.int8.graph import Graph, quantize, run_int
from lcs.subspace.export import materialize
from lcs.subspace.model import SubspaceModel


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).detach().cpu().numpy().astype(np.float64)


def int8_level(model: SubspaceModel, alpha: float, calibration: torch.Tensor, *, adds: bool = False) -> Graph:
    """`calibration`: NCHW images the activation ranges come from (e.g. a few hundred training samples); `adds`:
    see `from_torch` (CPU builds)."""
    net = materialize(model, alpha, calibration[:1])
    graph = from_torch(net, tuple(calibration.shape[1:]), adds=adds)
    return quantize(graph, nhwc(calibration))


def int8_accuracy(graph: Graph, images: torch.Tensor, labels, batch: int = 256) -> float:
    labels = np.asarray(labels)
    hits = 0
    for k in range(0, len(images), batch):
        logits = run_int(graph, graph.quantize_input(nhwc(images[k:k + batch])))
        hits += int((logits.argmax(1) == labels[k:k + batch]).sum())
    return hits / max(len(labels), 1)
