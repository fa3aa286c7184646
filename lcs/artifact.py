"""The artifact format (`.lcsa`): one file that carries a compiled subspace to a device.

The one home of this format: `lcs build` (CPU and MCU), `lcs deploy`, `lcs.runtime` and the simulator read and
write it only through this module. numpy + stdlib only (no torch, no tvm), so it works on a device.

An artifact is an uncompressed POSIX tar of regular files. `manifest.json` is its first member:

    {
      "format": "lcs-artifact",            "format_version": 2,     # 2 added "kind"; version 1 is still read
      "kind": "cpu" | "firmware",          # compiled libraries for lcs.runtime, or firmware for a serial board
      "lcs_version": "0.1.0",              "tvm_version": "0.27.0.post1" | null,
      "created": "2026-11-22T20:00:00Z",
      "target": {...},                      # the board dict (targets/<name>.json, Board.to_dict())
      "strategy": "per-level" | "weights-as-input" | "alpha-input" | "firmware" | ...,
      "config": {...},                      # RunConfig.to_dict() of the checkpoint
      "compression_map": {...},             # lcs.subspace.levels.map_to_dict()
      "input":  {"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"},
      "output": {"shape": [1, 10], "dtype": "float32"},
      "modules": {                          # compiled libraries and the order of their run-time inputs
        "lib/module0.so": {"entry": "main", "layout": "NHWC" | "NCHW",   # of the convolutions' activations
                          "params": [{"name": "features.0.0.weight", "shape": [3, 3, 1, 8], "dtype": "float32",
                                      "from_torch": "permute_dims(2,3,1,0)"}, ...],  # stored as the kernels read it
                          "extra_inputs": [],      # e.g. [{"name": "alpha", "shape": [1], "dtype": "float64"}]
                          "executor": "static" | "vm" | "int8"}  # lcs's C executor ("entry": "lcs_forward"), the
                                            #   Relax VM, or an int8 level's C library (weights inside, "lcs_run")
      },                                    #   ("why_not_static"); call: main(x, *extra_inputs (values = level[name]),
                                            #   *params), the static executor binds (*extra_inputs, *params) first
      "levels": [{
        "index": 0, "alpha": 1.0, "label": "width 1.000", "keep": 1.0, "width": 1.0, "bits": null,
        "accuracy": 0.93 | null,            # from the checkpoint's metrics if known
        "latency_ms": 0.12 | null,          # measured at build time on the board (host, or over RPC)
        "threads": 2 | null,                 # CPU threads this level runs on (the fewest within 3 % of its fastest)
        "cycles": null,                      # MCU builds
        "members": {"library": "lib/module0.so", "weights": "weights/level0.npz"},  # what this level uses
                                            #   (firmware builds: {"firmware": "firmware/<binary>"})
        "weights_encoding": {"format": "bitmask", "sparse": ["features.1.0.weight", ...]},  # sparse levels only
        "sparse_layers": [{"weight": ..., "kernel": "csr" | "csr_chw" | "dense", "dense_us": ..., ...}, ...],
        "sparse_stretch": {"layout": "chw", "from_pixels": 16, "level_us": {...}},
                                            #   unstructured levels on a timed board: the layer kernels chosen
      }, ...],
      "reference": "reference.npz",         # "input" (sample inputs) and "level<i>" (expected outputs)
      "runtime": {"threads": 2, ...},       # CPU builds timed on the board: the most threads lcs.runtime uses
      "firmware": {"binary": "firmware/...", "weights": "firmware/weights.bin", "flash_bytes": ..., ...,  # MCU
                   "precision": "fp32" | "int8",   # int8: the levels run integer kernels; the reference outputs
                   "int8": {"calibration": {"source", "split", "samples"}, "store": {"mode": "derived" | "ready",
                            "requested", "reason"?, ...}, "store_bytes", "bytes_per_model_weight", ...}},  # bit-exact
      "members": {"lib/module0.so": {"sha256": "...", "size": 1234}, ...}   # every member but the manifest
      ...                                   # producers may add keys (e.g. "firmware", "tuning"); readers ignore them
    }

Readers use the typed view (`Manifest`, `Level`, `Module`, parsed and checked by `Manifest.from_dict`: a hand-edited
manifest with a wrong type is one ArtifactError line); member names come from the helpers below (`library_member`,
`level_weights_member`, ...), so no other file spells a member path or reads a manifest key.

Weights files are `.npz` (numpy, no pickle) keyed by the module's parameter names. Quantized levels may store a
layer as int8 codes plus float32 scale/zero arrays; the module's `params` list says which. A level whose weights are
mostly zeros (unstructured sparsity) stores those arrays compactly, so its bytes follow the nonzeros: the level's
"weights_encoding" is {"format": "bitmask", "sparse": [names]}, and each named array is stored as "<name>|mask"
(uint8, np.packbits of `array.ravel() != 0`, pad bits zero) and "<name>|values" (the nonzeros in C order, the
param's dtype); `Artifact.level_weights` expands them, checking every length against the module's params.

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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from lcs import __version__
from lcs.atomic import atomic_path
from lcs.errors import LcsError

FORMAT = "lcs-artifact"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("cpu", "firmware")
PRECISIONS = ("fp32", "int8")  # firmware.precision
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


# -- level weights: sparse arrays as a bitmask and their nonzeros --------------------------------------------

WEIGHTS_ENCODING_KEY = "weights_encoding"  # a level's key in the manifest
# a level's key: the 1x1 convolutions the build timed dense and as CSR kernels on the board, and which one runs
# ({"weight", "kernel": "csr" | "csr_chw" | "dense", "density", "shape", "dense_us", "sparse_us", "chw_us" (one
#   thread: the choice),
#   "at_threads": {"N": [dense_us, sparse_us]} (the planned count, when more than one)}, tvm_build/sparse.py)
SPARSE_LAYERS_KEY = "sparse_layers"
# a level's key: the layout its sparse layers run in, timed per level (tvm_build/sparse.py): {"layout": "chw" |
# "hwc", "from_pixels": the stretch runs CHW from this many pixels down (None: channels-last), "level_us": {variant:
# one-thread us of the whole module}}; its "sparse_layers" then say "csr_chw" for the layers of the CHW stretch
SPARSE_STRETCH_KEY = "sparse_stretch"
WEIGHTS_ENCODINGS = ("bitmask",)
MASK_SUFFIX, VALUES_SUFFIX = "|mask", "|values"
# an array is stored sparse when that takes at most this share of its dense bytes (bitmask: 1/32 of fp32 plus the
# nonzeros, so below ~70 % nonzeros); tiny arrays (biases) stay dense
SPARSE_MAX_SHARE = 0.75
SPARSE_MIN_ELEMENTS = 64


def encode_weights(arrays: Mapping[str, np.ndarray]) -> tuple[bytes, dict | None]:
    """A level's weights as .npz bytes, floating-point arrays that are mostly zeros as bitmask + nonzeros. Returns
    (bytes, the level's weights_encoding for the manifest, None when every array is dense)."""
    out: dict[str, np.ndarray] = {}
    sparse = []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind == "f" and array.size >= SPARSE_MIN_ELEMENTS:
            flat = np.ascontiguousarray(array).reshape(-1)
            nonzero = flat != 0
            packed = (array.size + 7) // 8 + int(nonzero.sum()) * array.itemsize
            if packed <= SPARSE_MAX_SHARE * array.nbytes:
                out[name + MASK_SUFFIX] = np.packbits(nonzero)
                out[name + VALUES_SUFFIX] = flat[nonzero]
                sparse.append(name)
                continue
        out[name] = array
    return npz_bytes(out), ({"format": "bitmask", "sparse": sparse} if sparse else None)


def decode_weights(stored: dict[str, np.ndarray], encoding: dict | None, params, where: str) -> dict[str, np.ndarray]:
    """The dense arrays of a level's weights file (`encode_weights`); `params` ({name, shape, dtype} dicts) give
    each sparse array's shape and dtype. Anything inconsistent is one ArtifactError line."""
    if encoding is None:
        return stored
    specs = {p["name"]: p for p in params}
    out = dict(stored)
    for name in encoding["sparse"]:
        if name not in specs:
            raise ArtifactError(f"{where}: sparse weight {name!r} is not a parameter of the module")
        spec = specs[name]
        mask, values = out.pop(name + MASK_SUFFIX, None), out.pop(name + VALUES_SUFFIX, None)
        if name in out or mask is None or values is None:
            raise ArtifactError(f"{where}: sparse weight {name!r} needs exactly {name + MASK_SUFFIX!r} and "
                                f"{name + VALUES_SUFFIX!r}")
        try:
            shape = tuple(int(n) for n in spec["shape"])
            dtype = np.dtype(spec["dtype"])
        except (TypeError, ValueError):
            raise ArtifactError(f"{where}: weight {name!r} has no valid shape/dtype in the module") from None
        size = int(np.prod(shape))
        if mask.dtype != np.uint8 or mask.shape != ((size + 7) // 8,):
            raise ArtifactError(f"{where}: mask of {name!r} is {mask.dtype} {list(mask.shape)}, want uint8 "
                                f"[{(size + 7) // 8}]")
        bits = np.unpackbits(mask).astype(bool)
        if bits[size:].any():
            raise ArtifactError(f"{where}: mask of {name!r} sets bits past its {size} elements")
        bits = bits[:size]
        count = int(bits.sum())
        if values.dtype != dtype or values.shape != (count,):
            raise ArtifactError(f"{where}: values of {name!r} are {values.dtype} {list(values.shape)}, the mask "
                                f"wants {dtype} [{count}]")
        dense = np.zeros(size, dtype)
        dense[bits] = values
        out[name] = dense.reshape(shape)
    return out


def _check_member_name(name: str) -> None:
    if not name or name.startswith("/") or "\\" in name or posixpath.normpath(name) != name or \
            name == ".." or name.startswith("../") or "/../" in name:
        raise ArtifactError(f"unsafe member path {name!r}")


# -- member names: the one place that spells them ------------------------------------------------------------

REFERENCE_MEMBER = "reference.npz"
ENDPOINTS_MEMBER = "weights/endpoints.npz"  # alpha-input: every level shares the two endpoints
FIRMWARE_WEIGHTS_MEMBER = "firmware/weights.bin"


def library_member(i: int) -> str:
    return f"lib/module{i}.so"


def level_weights_member(i: int) -> str:
    return f"weights/level{i}.npz"


def firmware_member(binary_name: str) -> str:
    return f"firmware/{binary_name}"


# How far a level's outputs may sit from its reference outputs: one rule for `lcs build`'s verification,
# `python -m lcs.runtime --check` and `lcs deploy`'s self-test.
FLOAT_ATOL = 1e-4  # fp32 kernels against torch: float rounding in another accumulation order
# A level whose activations sit on a b-bit grid: where float rounding puts a value on the other side of a grid
# boundary it lands one step away (ResNet-8's 5-8-bit levels: up to 1.1e-3 from TVM against torch).
GRID_ATOL = 2e-3


def level_atol(bits: int | None, base: float = FLOAT_ATOL) -> float:
    """The tolerance of a level: `base` (a build's verification.atol; 0 where the reference is the integer reference
    itself, bit-identical or wrong), widened to GRID_ATOL for a float level with quantized activations."""
    return base if base == 0 or bits is None else max(base, GRID_ATOL)


def reference_key(level_index: int) -> str:
    """The key of a level's expected outputs in the reference set (beside "input")."""
    return f"level{level_index}"


# -- the typed manifest --------------------------------------------------------------------------------------

def _bad(where: str, what: str, value) -> ArtifactError:
    return ArtifactError(f"{where}: {what}, got {value!r}"[:300])


def _number(value, where: str, field_name: str, *, optional: bool = True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(where, f"{field_name} must be a number", value)
    return value


def _int(value, where: str, field_name: str, *, optional: bool = True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, f"{field_name} must be a whole number", value)
    return value


def _obj(value, where: str, field_name: str, *, optional: bool = True) -> dict | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise _bad(where, f"{field_name} must be an object", value)
    return value


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str
    name: str | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @classmethod
    def from_dict(cls, data, where: str) -> "TensorSpec":
        data = _obj(data, where, "a tensor spec", optional=False)
        shape = data.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
            raise _bad(where, "shape must be a list of whole numbers", shape)
        if not isinstance(data.get("dtype"), str):
            raise _bad(where, "dtype must be a string", data.get("dtype"))
        return cls(tuple(shape), data["dtype"], data.get("name"))


@dataclass(frozen=True)
class Module:
    """A compiled library: how to call it, and its run-time inputs in order."""

    name: str  # its member name
    entry: str
    layout: str
    params: tuple[dict, ...]  # {"name", "shape", "dtype", "from_torch"?}
    extra_inputs: tuple[dict, ...]  # {"name", "shape", "dtype"}; each level gives the value under the same name
    executor: str | None  # "static" | "vm" | "int8"
    why_not_static: str | None = None

    @classmethod
    def from_dict(cls, name: str, data, where: str) -> "Module":
        data = _obj(data, where, f"module {name!r}", optional=False)
        params, extra = data.get("params", []), data.get("extra_inputs", [])
        for what, items in (("params", params), ("extra_inputs", extra)):
            if not isinstance(items, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str)
                                                      and isinstance(p.get("shape"), list) for p in items):
                raise _bad(where, f"module {name!r}: {what} must be a list of {{name, shape, dtype}}", items)
        return cls(name, str(data.get("entry", "main")), str(data.get("layout", "NCHW")), tuple(params),
                   tuple(extra), data.get("executor"), data.get("why_not_static"))


@dataclass(frozen=True)
class Level:
    """One level of the artifact: its place in the subspace, what was measured, and the members it uses."""

    index: int
    alpha: float
    label: str = ""
    keep: float | None = None
    width: float | None = None
    bits: int | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    threads: int | None = None
    cycles: int | None = None
    switch_cycles: int | None = None
    max_abs_diff: float | None = None
    members: dict = field(default_factory=dict)  # role ("library", "weights", "firmware") -> member name
    inputs: dict = field(default_factory=dict)  # values of the module's extra inputs (e.g. alpha), by name
    weights_encoding: dict | None = None  # {"format": "bitmask", "sparse": [names]} (see the module docstring)

    @property
    def library(self) -> str | None:
        return self.members.get("library")

    @property
    def weights(self) -> str | None:
        return self.members.get("weights")

    @property
    def firmware(self) -> str | None:
        return self.members.get("firmware")

    @classmethod
    def from_dict(cls, data, where: str, extra_names: set[str]) -> "Level":
        data = _obj(data, where, "a level", optional=False)
        if "index" not in data:
            raise ArtifactError(f"{where}: a level without an index")
        index = _int(data["index"], where, "index", optional=False)
        if index < 0:
            raise _bad(where, "index must be >= 0", index)
        alpha = _number(data.get("alpha"), where, "alpha", optional=False)
        members = _obj(data.get("members", {}), where, "members") or {}
        for role, member in members.items():
            if not isinstance(member, str):
                raise _bad(where, f"member {role!r} must be a member name (a string)", member)
        label = data.get("label")
        encoding = _obj(data.get(WEIGHTS_ENCODING_KEY), where, WEIGHTS_ENCODING_KEY)
        if encoding is not None:
            if encoding.get("format") not in WEIGHTS_ENCODINGS:
                raise _bad(where, f"{WEIGHTS_ENCODING_KEY}.format must be one of {', '.join(WEIGHTS_ENCODINGS)} "
                                  f"(this lcs reads no other)", encoding.get("format"))
            sparse = encoding.get("sparse")
            if not isinstance(sparse, list) or not all(isinstance(n, str) for n in sparse) or \
                    len(set(sparse)) != len(sparse):
                raise _bad(where, f"{WEIGHTS_ENCODING_KEY}.sparse must be a list of distinct weight names", sparse)
        return cls(index, float(alpha), "" if label is None else str(label),
                   _number(data.get("keep"), where, "keep"), _number(data.get("width"), where, "width"),
                   _int(data.get("bits"), where, "bits"), _number(data.get("accuracy"), where, "accuracy"),
                   _number(data.get("latency_ms"), where, "latency_ms"), _int(data.get("threads"), where, "threads"),
                   _int(data.get("cycles"), where, "cycles"), _int(data.get("switch_cycles"), where, "switch_cycles"),
                   _number(data.get("max_abs_diff"), where, "max_abs_diff"), dict(members),
                   {name: data[name] for name in extra_names if name in data}, encoding)


@dataclass(frozen=True)
class Firmware:
    binary: str
    weights: str
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    images: dict = field(default_factory=dict)  # MCU builds: {"bin": member, "hex": member, "base": "0x..."}
    precision: str = "fp32"  # "int8": integer kernels, outputs bit-identical to the stored reference

    @property
    def hex_image(self) -> str | None:
        """The Intel .hex image `lcs flash` writes."""
        return self.images.get("hex")


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`, typed. `raw` keeps the JSON as written (for `lcs info --json` and producers' extra keys)."""

    kind: str  # "cpu" | "firmware"
    format_version: int
    target: dict  # the board dict (targets/<name>.json)
    strategy: str | None
    input: TensorSpec
    output: TensorSpec
    modules: dict  # member name -> Module
    levels: tuple  # of Level, in index order as written
    reference: str | None
    members: dict  # member name -> {"sha256", "size"}
    firmware: Firmware | None
    threads: int | None  # runtime.threads: the most threads lcs.runtime uses (CPU builds timed on the board)
    atol: float | None  # verification.atol: the tolerance the build verified every level against
    raw: dict

    @property
    def target_name(self) -> str | None:
        return self.target.get("name")

    @property
    def family(self) -> str | None:
        return (self.raw.get("compression_map") or {}).get("family")

    def member_size(self, member: str | None) -> int | None:
        return int(self.members[member]["size"]) if member in self.members else None

    def member_sha256(self, member: str) -> str:
        return self.members[member]["sha256"]

    def referenced(self) -> set[str]:
        names = set(self.modules)
        for level in self.levels:
            names.update(level.members.values())
        if self.reference:
            names.add(self.reference)
        if self.firmware is not None:
            names.update((self.firmware.binary, self.firmware.weights))
            names.update(m for role, m in self.firmware.images.items() if role in ("bin", "hex"))
        return names

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST, *, listed: bool = True) -> "Manifest":
        """Check types and shape (one ArtifactError line for anything off); `listed`: the members table must be
        there (false only while a builder is still writing)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{where} is not an lcs artifact")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ArtifactError(f"{where}: artifact format version {version} is not supported "
                                f"(this lcs reads {', '.join(map(str, READABLE_VERSIONS))})")
        kind = data.get("kind")
        if version == 1 and kind is None:  # version 1 had no kind: its firmware builds were strategy "firmware"
            kind = "firmware" if data.get("strategy") == "firmware" else "cpu"
        if kind not in KINDS:
            raise _bad(where, f"kind must be one of {', '.join(KINDS)}", kind)
        target = data.get("target")
        target = {"name": target} if isinstance(target, str) else _obj(target, where, "target") or {}
        raw_levels = data.get("levels")
        if not isinstance(raw_levels, list):
            raise _bad(where, "levels must be a list of level objects", raw_levels)
        raw_modules = _obj(data.get("modules", {}), where, "modules") or {}
        modules = {name: Module.from_dict(name, m, where) for name, m in raw_modules.items()}
        extra_names = {e["name"] for m in modules.values() for e in m.extra_inputs}
        levels = tuple(Level.from_dict(lv, f"{where}: levels[{i}]", extra_names) for i, lv in enumerate(raw_levels))
        indices = [lv.index for lv in levels]
        if len(set(indices)) != len(indices):
            raise _bad(where, "level indices must not repeat", indices)
        for lv in levels:
            if lv.library is not None and lv.library not in modules:
                raise ArtifactError(f"{where}: level {lv.index} uses library {lv.library!r}, which is not a module")
        members = data.get("members")
        if members is None and not listed:
            members = {}
        members = _obj(members, where, "members", optional=False)
        for name, meta in members.items():
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or \
                    isinstance(meta.get("size"), bool) or not isinstance(meta.get("size"), int):
                raise _bad(where, f"members[{name!r}] must be {{\"sha256\": ..., \"size\": ...}}", meta)
        fw = _obj(data.get("firmware"), where, "firmware")
        firmware = None
        if fw is not None:
            if not isinstance(fw.get("binary"), str) or not isinstance(fw.get("weights"), str):
                raise _bad(where, "firmware needs binary and weights member names", fw)
            images = _obj(fw.get("images", {}), where, "firmware.images") or {}
            for role, member in images.items():
                if not isinstance(member, str):
                    raise _bad(where, f"firmware.images[{role!r}] must be a string", member)
            precision = fw.get("precision", "fp32")
            if precision not in PRECISIONS:
                raise _bad(where, f"firmware.precision must be one of {', '.join(PRECISIONS)}", precision)
            firmware = Firmware(fw["binary"], fw["weights"], _int(fw.get("flash_bytes"), where, "flash_bytes"),
                                _int(fw.get("ram_bytes"), where, "ram_bytes"), dict(images), precision)
        if kind == "firmware" and firmware is None:
            raise ArtifactError(f"{where}: a firmware artifact without its firmware section")
        runtime = _obj(data.get("runtime"), where, "runtime") or {}
        verification = _obj(data.get("verification"), where, "verification") or {}
        reference = data.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise _bad(where, "reference must be a member name", reference)
        strategy = data.get("strategy")
        return cls(kind, version, target, None if strategy is None else str(strategy),
                   TensorSpec.from_dict(data.get("input"), f"{where}: input"),
                   TensorSpec.from_dict(data.get("output"), f"{where}: output"), modules, levels, reference, members,
                   firmware, _int(runtime.get("threads"), where, "runtime.threads"),
                   _number(verification.get("atol"), where, "verification.atol"), data)


def new_manifest(*, kind: str, **fields) -> dict:
    """A manifest with the format header filled in; callers add target, levels, etc."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "lcs_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **fields}


def write_artifact(path: str | Path, manifest: "dict | Manifest", members: Mapping[str, bytes | Path]) -> Path:
    """Write `manifest` plus `members` (name -> bytes or a file path) atomically; fills manifest["members"]. The
    manifest must parse as a `Manifest`: a builder cannot write what readers would refuse."""
    path = Path(path)
    blobs: dict[str, bytes] = {}
    for name, value in members.items():
        _check_member_name(name)
        if name == MANIFEST:
            raise ArtifactError(f"{MANIFEST} is written by write_artifact itself")
        blobs[name] = Path(value).read_bytes() if isinstance(value, Path) else bytes(value)
    manifest = dict(manifest.raw if isinstance(manifest, Manifest) else manifest)
    manifest.setdefault("format", FORMAT)
    manifest.setdefault("format_version", FORMAT_VERSION)
    manifest["members"] = {name: {"sha256": sha256(b), "size": len(b)} for name, b in sorted(blobs.items())}
    missing = sorted(Manifest.from_dict(manifest, f"{path} ({MANIFEST})").referenced() - set(blobs))
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


@dataclass
class Artifact:
    """A verified artifact held in memory (artifacts are a few MB at most)."""

    path: Path
    manifest: Manifest
    _blobs: dict[str, bytes]

    @property
    def levels(self) -> tuple[Level, ...]:
        return self.manifest.levels

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def target_name(self) -> str | None:
        return self.manifest.target_name

    def members(self) -> list[str]:
        return sorted(self._blobs)

    def read(self, member: str) -> bytes:
        if member not in self._blobs:
            raise ArtifactError(f"{self.path}: no member {member!r}")
        return self._blobs[member]

    def read_npz(self, member: str) -> dict[str, np.ndarray]:
        return load_npz(self.read(member))

    def level_weights(self, level: Level) -> dict[str, np.ndarray]:
        """A level's weights, dense, by parameter name (sparse arrays expanded; see `decode_weights`)."""
        if level.weights is None:
            return {}
        module = self.manifest.modules.get(level.library)
        params = module.params if module is not None else ()
        try:
            stored = self.read_npz(level.weights)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # zip/npy headers of a member that passed its sha256
            raise ArtifactError(f"{self.path}: weights of level {level.index} are not a readable .npz ({exc})") \
                from None
        return decode_weights(stored, level.weights_encoding, params, f"{self.path}: level {level.index}")

    def reference(self) -> dict[str, np.ndarray]:
        """Sample inputs ("input") and the expected output of each level (`reference_key(index)`)."""
        if self.manifest.reference is None:
            raise ArtifactError(f"{self.path} carries no reference inputs and outputs")
        return self.read_npz(self.manifest.reference)

    def expected(self, reference: dict, level: Level) -> np.ndarray:
        """The stored outputs of `level` from a reference set."""
        out = reference.get(reference_key(level.index))
        if out is None:
            raise ArtifactError(f"{self.path}: no reference outputs for level {level.index}")
        return out

    def require_kind(self, kind: str, why: str) -> "Artifact":
        if self.kind != kind:
            raise ArtifactError(f"{self.path} is a {self.kind} build for {self.target_name!r}, not "
                                f"{'firmware' if kind == 'firmware' else 'a CPU build'}; {why}")
        return self

    def firmware_binary(self) -> str:
        """The member holding the firmware program (QEMU ELF or host-sim executable)."""
        self.require_kind("firmware", "--sim starts the firmware of an MCU or host-sim build")
        return self.manifest.firmware.binary

    def extract(self, directory: str | Path) -> Path:
        """Write every verified member under `directory` (manifest included); returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        root = directory.resolve()
        for name, data in [(MANIFEST, json.dumps(self.manifest.raw, indent=2).encode()), *self._blobs.items()]:
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
        raw = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an lcs artifact")
    manifest = Manifest.from_dict(raw, str(path))
    listed = manifest.members
    unlisted = sorted(set(blobs) - set(listed))
    if unlisted:
        raise ArtifactError(f"{path}: members not listed in the manifest: {', '.join(unlisted)}")
    for name, meta in listed.items():
        if name not in blobs:
            raise ArtifactError(f"{path} is truncated or incomplete: member {name!r} is missing")
        data = blobs[name]
        if len(data) != meta["size"] or sha256(data) != meta["sha256"]:
            raise ArtifactError(f"{path}: sha256 of member {name!r} does not match the manifest (corrupt file)")
    missing = sorted(manifest.referenced() - set(blobs))
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
    m = artifact.manifest
    for level in artifact.levels:
        sizes = {role: m.member_size(member) for role, member in level.members.items()}
        rows.append({"index": level.index, "alpha": level.alpha, "label": level.label or None,
                     "accuracy": level.accuracy, "latency_ms": level.latency_ms, "threads": level.threads,
                     "cycles": level.cycles, "bytes": sum(sizes.values()), "member_bytes": sizes,
                     "members": dict(level.members)})
    return rows


def describe(path: str | Path, expect_target: str | None = None) -> dict:
    """What `lcs info` shows: the manifest's header, per-level rows with their sizes, and the members."""
    a = open_artifact(path, expect_target)
    m, raw = a.manifest, a.manifest.raw
    return {"path": str(path), "format": FORMAT, "format_version": m.format_version, "kind": m.kind,
            "lcs_version": raw.get("lcs_version"), "tvm_version": raw.get("tvm_version"),
            "created": raw.get("created"), "target": a.target_name, "strategy": m.strategy, "family": m.family,
            "input": raw.get("input"), "output": raw.get("output"), "modules": raw.get("modules"),
            "verification": raw.get("verification"), "tuning": raw.get("tuning"), "runtime": raw.get("runtime"),
            "levels": summary_rows(a), "members": m.members, "size": Path(path).stat().st_size,
            "precision": m.firmware.precision if m.firmware is not None else raw.get("precision")}  # cpu: --int8
