"""The artifact format (`.lcsa`): one file that carries a compiled subspace to a device.

The one home of this format: `lcs build` (CPU and MCU), `lcs deploy`, `lcs.runtime` and the simulator read and
write it only through this module. numpy + stdlib only (no torch, no tvm), so it works on a device.

An artifact is an uncompressed POSIX tar of regular files. `manifest.json` is its first member:

    {
      "format": "lcs-artifact",            "format_version": 1,
      "lcs_version": "0.1.0",              "tvm_version": "0.27.0.post1" | null,
      "created": "2026-11-22T20:00:00Z",
      "target": {...},                      # the board dict (targets/<name>.json, Board.to_dict())
      "strategy": "per-level" | "weights-as-input" | "alpha-input" | "firmware" | ...,
      "config": {...},                      # RunConfig.to_dict() of the checkpoint
      "compression_map": {...},             # lcs.subspace.levels.map_to_dict()
      "input":  {"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"},
      "output": {"shape": [1, 10], "dtype": "float32"},
      "modules": {                          # compiled libraries and the order of their run-time inputs
        "lib/level0.so": {"entry": "main", "layout": "NHWC" | "NCHW",   # of the convolutions' activations
                          "params": [{"name": "features.0.0.weight", "shape": [3, 3, 1, 8], "dtype": "float32",
                                      "from_torch": "permute_dims(2,3,1,0)"}, ...],  # stored as the kernels read it
                          "extra_inputs": [],      # e.g. [{"name": "alpha", "shape": [1], "dtype": "float64"}]
                          "executor": "static" | "vm"}   # lcs's C executor ("entry": "lcs_forward"), or the Relax VM
      },                                    #   ("why_not_static"); call: main(x, *extra_inputs (values = level[name]),
                                            #   *params), the static executor binds (*extra_inputs, *params) first
      "levels": [{
        "index": 0, "alpha": 1.0, "label": "width 1.000", "keep": 1.0, "width": 1.0, "bits": null,
        "accuracy": 0.93 | null,            # from the checkpoint's metrics if known
        "latency_ms": 0.12 | null,          # measured at build time on the board (host, or over RPC)
        "threads": 2 | null,                 # CPU threads this level runs on (the fewest within 3 % of its fastest)
        "cycles": null,                      # MCU builds
        "members": {"library": "lib/level0.so", "weights": "weights/level0.npz"}   # what this level uses
      }, ...],
      "reference": "reference.npz",         # "input" (sample inputs) and "level<i>" (expected outputs)
      "runtime": {"threads": 2, ...},       # CPU builds timed on the board: the most threads lcs.runtime uses
      "members": {"lib/level0.so": {"sha256": "...", "size": 1234}, ...}   # every member but the manifest
      ...                                   # producers may add keys (e.g. "firmware", "tuning"); readers ignore them
    }

Weights files are `.npz` (numpy, no pickle) keyed by the module's parameter names. Quantized levels may store a
layer as int8 codes plus float32 scale/zero arrays; the module's `params` list says which.

Reading is safe: every member must be a regular file with a relative, normalised path (no `..`, no absolute paths, no
links or devices), listed in the manifest with a matching size and sha256; truncated or foreign files are refused.
Writing is atomic (temp file + rename).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from lcs import __version__
from lcs.atomic import atomic_path
from lcs.errors import LcsError

FORMAT = "lcs-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".lcsa"


class ArtifactError(LcsError):
    """An artifact that is corrupt, truncated, unsafe, foreign or built for another target."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _check_member_name(name: str) -> None:
    if not name or name.startswith("/") or "\\" in name or posixpath.normpath(name) != name or \
            name == ".." or name.startswith("../") or "/../" in name:
        raise ArtifactError(f"unsafe member path {name!r}")


def new_manifest(**fields) -> dict:
    """A manifest with the format header filled in; callers add target, levels, etc."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "lcs_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **fields}


def write_artifact(path: str | Path, manifest: dict, members: Mapping[str, bytes | Path]) -> Path:
    """Write `manifest` plus `members` (name -> bytes or a file path) atomically; fills manifest["members"]."""
    path = Path(path)
    blobs: dict[str, bytes] = {}
    for name, value in members.items():
        _check_member_name(name)
        if name == MANIFEST:
            raise ArtifactError(f"{MANIFEST} is written by write_artifact itself")
        blobs[name] = Path(value).read_bytes() if isinstance(value, Path) else bytes(value)
    manifest = dict(manifest)
    manifest.setdefault("format", FORMAT)
    manifest.setdefault("format_version", FORMAT_VERSION)
    manifest["members"] = {name: {"sha256": sha256(b), "size": len(b)} for name, b in sorted(blobs.items())}
    referenced = _referenced_members(manifest)
    missing = sorted(referenced - set(blobs))
    if missing:
        raise ArtifactError(f"manifest refers to members that are not written: {', '.join(missing)}")
    head = json.dumps(manifest, indent=2, sort_keys=True).encode()
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in [(MANIFEST, head), *sorted(blobs.items())]:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an artifact is meant to be copied around
    return path


def _referenced_members(manifest: dict) -> set[str]:
    names = set(manifest.get("modules") or {})
    for level in manifest.get("levels") or []:
        names.update(v for v in (level.get("members") or {}).values() if isinstance(v, str))
    if manifest.get("reference"):
        names.add(manifest["reference"])
    return names


@dataclass
class Artifact:
    """A verified artifact held in memory (artifacts are a few MB at most)."""

    path: Path
    manifest: dict
    _blobs: dict[str, bytes]

    @property
    def levels(self) -> list[dict]:
        return self.manifest["levels"]

    @property
    def target_name(self) -> str | None:
        target = self.manifest.get("target") or {}
        return target.get("name") if isinstance(target, dict) else str(target)

    def members(self) -> list[str]:
        return sorted(self._blobs)

    def read(self, member: str) -> bytes:
        if member not in self._blobs:
            raise ArtifactError(f"{self.path}: no member {member!r}")
        return self._blobs[member]

    def read_npz(self, member: str) -> dict[str, np.ndarray]:
        return load_npz(self.read(member))

    def reference(self) -> dict[str, np.ndarray]:
        """Sample inputs ("input") and the expected output of each level ("level<i>")."""
        return self.read_npz(self.manifest["reference"])

    def extract(self, directory: str | Path) -> Path:
        """Write every verified member under `directory` (manifest included); returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        root = directory.resolve()
        for name, data in [(MANIFEST, json.dumps(self.manifest, indent=2).encode()), *self._blobs.items()]:
            out = (root / name).resolve()
            if root not in out.parents:  # belt and braces: names were checked on reading
                raise ArtifactError(f"unsafe member path {name!r}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        return directory


def open_artifact(path: str | Path, expect_target: str | dict | None = None) -> Artifact:
    """Read and verify an artifact. `expect_target` (a board name or dict) refuses artifacts for other boards."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    blobs: dict[str, bytes] = {}
    head: bytes | None = None
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                _check_member_name(info.name)
                # tarfile's "data" filter refuses links, devices, absolute paths and escapes from the root. Python
                # 3.11.2 (Debian / Raspberry Pi OS bookworm) predates it; the name and regular-file checks here
                # refuse the same things there.
                if hasattr(tarfile, "data_filter"):
                    try:
                        tarfile.data_filter(info, "/nonexistent-root")
                    except tarfile.FilterError as exc:
                        raise ArtifactError(f"{path}: unsafe member {info.name!r} ({exc})") from None
                if not info.isreg():
                    raise ArtifactError(f"{path}: member {info.name!r} is not a regular file")
                if info.name in blobs or (info.name == MANIFEST and head is not None):
                    raise ArtifactError(f"{path}: member {info.name!r} appears twice")
                fh = tar.extractfile(info)
                data = fh.read() if fh is not None else b""
                if len(data) != info.size:
                    raise ArtifactError(f"{path} is truncated (member {info.name!r})")
                if info.name == MANIFEST:
                    head = data
                else:
                    blobs[info.name] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"{path} is not a readable artifact (corrupt or truncated: {exc})") from None
    if head is None:
        raise ArtifactError(f"{path} is not an lcs artifact (no {MANIFEST})")
    try:
        manifest = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an lcs artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('format_version')} is not supported "
                            f"(this lcs reads {FORMAT_VERSION})")
    listed = manifest.get("members")
    if not isinstance(listed, dict) or not isinstance(manifest.get("levels"), list):
        raise ArtifactError(f"{path}: manifest lacks members or levels")
    unlisted = sorted(set(blobs) - set(listed))
    if unlisted:
        raise ArtifactError(f"{path}: members not listed in the manifest: {', '.join(unlisted)}")
    for name, meta in listed.items():
        if name not in blobs:
            raise ArtifactError(f"{path} is truncated or incomplete: member {name!r} is missing")
        data = blobs[name]
        if len(data) != meta.get("size") or sha256(data) != meta.get("sha256"):
            raise ArtifactError(f"{path}: sha256 of member {name!r} does not match the manifest (corrupt file)")
    missing = sorted(_referenced_members(manifest) - set(blobs))
    if missing:
        raise ArtifactError(f"{path}: manifest refers to missing members: {', '.join(missing)}")
    artifact = Artifact(path, manifest, blobs)
    if expect_target is not None:
        want = expect_target.get("name") if isinstance(expect_target, dict) else str(expect_target)
        if artifact.target_name != want:
            raise ArtifactError(f"{path} was built for target {artifact.target_name!r}, not {want!r}; "
                                f"rebuild it with `lcs build ... --target {want}`")
    return artifact


def summary_rows(artifact: Artifact) -> list[dict]:
    """One row per level for `lcs info` (table or JSON)."""
    rows = []
    for level in artifact.levels:
        members = level.get("members") or {}
        sizes = {role: artifact.manifest["members"][m]["size"] for role, m in members.items() if isinstance(m, str)}
        rows.append({"index": level["index"], "alpha": level["alpha"], "label": level.get("label"),
                     "accuracy": level.get("accuracy"), "latency_ms": level.get("latency_ms"),
                     "threads": level.get("threads"), "cycles": level.get("cycles"), "bytes": sum(sizes.values()),
                     "member_bytes": sizes, "members": members})
    return rows


def describe(path: str | Path, expect_target: str | None = None) -> dict:
    """What `lcs info` shows: the manifest's header, per-level rows with their sizes, and the members."""
    a = open_artifact(path, expect_target)
    m = a.manifest
    return {"path": str(path), "format": m["format"], "format_version": m["format_version"],
            "lcs_version": m.get("lcs_version"), "tvm_version": m.get("tvm_version"), "created": m.get("created"),
            "target": a.target_name, "strategy": m.get("strategy"),
            "family": (m.get("compression_map") or {}).get("family"), "input": m.get("input"),
            "output": m.get("output"), "modules": m.get("modules"), "verification": m.get("verification"),
            "tuning": m.get("tuning"), "runtime": m.get("runtime"), "levels": summary_rows(a), "members": m["members"],
            "size": Path(path).stat().st_size}
