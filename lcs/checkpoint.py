"""Checkpoints: safetensors with the full RunConfig embedded in the header metadata.

Loading is strict: the file must be an lcs checkpoint of a supported format, its config must
build a model, and its tensors must match that model exactly (names, shapes, dtypes) and the sha256 digest
of their names, dtypes, shapes and bytes written into the metadata on save (`tensors_sha256`), so flipped
bytes are refused instead of built and evaluated. A checkpoint written before the digest existed loads with
a one-line warning on stderr: its tensors are only checked for shape and dtype.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lcs import __version__
from lcs.atomic import atomic_path
from lcs.config import RunConfig
from lcs.errors import CheckpointError, LcsError
from lcs.subspace.model import SubspaceModel

FORMAT = "lcs-checkpoint"
FORMAT_VERSION = 1
DIGEST_KEY = "tensors_sha256"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor in name order: name, dtype, shape, then its bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    config: RunConfig
    model: SubspaceModel
    metrics: dict = field(default_factory=dict)  # e.g. accuracy per level from training or eval


def build(config: RunConfig) -> SubspaceModel:
    from lcs.models import build_model

    return SubspaceModel(build_model(config.model), config.subspace)


def save(path: str | Path, config: RunConfig, model: SubspaceModel, metrics: dict | None = None) -> Path:
    path = Path(path)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "lcs_version": __version__,
        "config": config.to_json(),
        "metrics": json.dumps(metrics or {}),
        DIGEST_KEY: tensors_digest(state),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(fh.read(size))
    except (ValueError, OSError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lcs checkpoint (no lcs metadata)")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')} is not supported "
                              f"(this lcs reads {FORMAT_VERSION})")
    return meta


def load(path: str | Path) -> Checkpoint:
    path = Path(path)
    meta = read_metadata(path)
    try:
        config = RunConfig.from_json(meta.get("config", ""))
        metrics = json.loads(meta.get("metrics") or "{}")
    except LcsError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: metrics are not valid JSON") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    digest = meta.get(DIGEST_KEY)
    if digest is None:
        print(f"warning: {path} has no tensor digest (written by an older lcs); its tensors are not checked "
              f"for corruption", file=sys.stderr)
    elif tensors_digest(tensors) != digest:
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the digest written with them")
    model = build(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}" if unexpected else "",
        ]))
        raise CheckpointError(f"{path}: tensors do not match the config's model ({detail})")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor {name} is {tuple(got.shape)} {got.dtype}, "
                                  f"the config's model needs {tuple(want.shape)} {want.dtype}")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return Checkpoint(config, model, metrics)


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
