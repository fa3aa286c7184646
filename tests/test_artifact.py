"""The artifact format: round trip, and every way a bad file is refused."""

from __future__ import annotations

import io
import os
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lcs import artifact as art


def _manifest() -> dict:
    return art.new_manifest(
        kind="cpu", target={"name": "host", "kind": "linux"}, strategy="per-level", tvm_version=None,
        input={"name": "x", "shape": [1, 4], "dtype": "float32"}, output={"shape": [1, 2], "dtype": "float32"},
        modules={"lib/level0.so": {"entry": "main", "params": [], "extra_inputs": []}},
        levels=[{"index": 0, "alpha": 1.0, "label": "dense", "keep": 1.0, "width": 1.0, "bits": None,
                 "accuracy": None, "latency_ms": None, "cycles": None,
                 "members": {"library": "lib/level0.so", "weights": "weights/level0.npz"}}],
        reference="reference.npz")


def _members() -> dict:
    return {"lib/level0.so": b"\x7fELF fake library",
            "weights/level0.npz": art.npz_bytes({"w": np.arange(6, dtype=np.int8)}),
            "reference.npz": art.npz_bytes({"input": np.ones((2, 1, 4), np.float32),
                                            "level0": np.zeros((2, 1, 2), np.float32)})}


@pytest.fixture()
def good(tmp_path):
    return art.write_artifact(tmp_path / "a.lcsa", _manifest(), _members())


def test_round_trip(good, tmp_path):
    a = art.open_artifact(good, expect_target="host")
    assert a.manifest.raw["format"] == "lcs-artifact" and a.manifest.format_version == art.FORMAT_VERSION
    assert a.kind == "cpu" and a.levels[0].library == "lib/level0.so" and a.levels[0].label == "dense"
    assert a.manifest.input.shape == (1, 4) and a.manifest.modules["lib/level0.so"].entry == "main"
    assert a.read("lib/level0.so") == b"\x7fELF fake library"
    assert a.read_npz("weights/level0.npz")["w"].dtype == np.int8
    assert a.reference()["input"].shape == (2, 1, 4)
    m = a.manifest.members["lib/level0.so"]
    assert m["size"] == 17 and len(m["sha256"]) == 64
    out = a.extract(tmp_path / "x")
    assert (out / "lib" / "level0.so").read_bytes() == b"\x7fELF fake library"
    assert json.loads((out / "manifest.json").read_text())["strategy"] == "per-level"
    assert art.summary_rows(a)[0]["bytes"] > 17


def test_foreign_target_refused(good):
    with pytest.raises(art.ArtifactError, match="built for target 'host', not 'rasp4'"):
        art.open_artifact(good, expect_target="rasp4")


def test_truncated_refused(good, tmp_path):
    data = good.read_bytes()
    for cut in (len(data) // 2, 700, 100):
        bad = tmp_path / f"cut{cut}.lcsa"
        bad.write_bytes(data[:cut])
        with pytest.raises(art.ArtifactError):
            art.open_artifact(bad)


def test_flipped_byte_refused(good, tmp_path):
    data = bytearray(good.read_bytes())
    pos = bytes(data).index(b"fake library")
    data[pos] ^= 0xFF
    bad = tmp_path / "flip.lcsa"
    bad.write_bytes(bytes(data))
    with pytest.raises(art.ArtifactError, match="sha256 of member 'lib/level0.so'"):
        art.open_artifact(bad)


def _tar_with(tmp_path, extra: tarfile.TarInfo, payload: bytes = b"") -> str:
    src = tarfile.open(tmp_path / "a.lcsa")
    path = tmp_path / "evil.lcsa"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in src:
            tar.addfile(info, src.extractfile(info))
        tar.addfile(extra, io.BytesIO(payload) if extra.isreg() else None)
    return path


@pytest.mark.parametrize("name,kind", [("../escape.txt", tarfile.REGTYPE), ("/etc/evil", tarfile.REGTYPE),
                                       ("lib/link.so", tarfile.SYMTYPE), ("lib/hard.so", tarfile.LNKTYPE),
                                       ("a/../../b", tarfile.REGTYPE)])
@pytest.mark.parametrize("has_data_filter", [True, False])
def test_unsafe_members_refused(good, tmp_path, name, kind, has_data_filter, monkeypatch):
    if not has_data_filter:  # Python 3.11.2 on Raspberry Pi OS bookworm has no tarfile.data_filter
        monkeypatch.delattr(tarfile, "data_filter")
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "lib/level0.so"
    else:
        info.size = 3
    path = _tar_with(tmp_path, info, b"bad")
    with pytest.raises(art.ArtifactError, match="unsafe|regular file"):
        art.open_artifact(path)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_unlisted_member_refused(good, tmp_path):
    info = tarfile.TarInfo("extra.bin")
    info.size = 3
    with pytest.raises(art.ArtifactError, match="not listed"):
        art.open_artifact(_tar_with(tmp_path, info, b"abc"))


def test_not_an_artifact(tmp_path):
    junk = tmp_path / "junk.lcsa"
    junk.write_bytes(b"hello world" * 100)
    with pytest.raises(art.ArtifactError):
        art.open_artifact(junk)
    other = tmp_path / "other.lcsa"
    with tarfile.open(other, "w") as tar:
        data = json.dumps({"format": "something-else"}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(art.ArtifactError, match="not an lcs artifact"):
        art.open_artifact(other)
    with pytest.raises(art.ArtifactError, match="does not exist"):
        art.open_artifact(tmp_path / "missing.lcsa")


def test_write_refuses_missing_member_and_leaves_nothing(tmp_path):
    members = _members()
    del members["reference.npz"]
    with pytest.raises(art.ArtifactError, match="reference.npz"):
        art.write_artifact(tmp_path / "b.lcsa", _manifest(), members)
    assert list(tmp_path.iterdir()) == []


def test_no_torch_or_tvm_import():
    code = "import sys, lcs.artifact; bad = [m for m in ('torch', 'tvm', 'tvm_build') if m in sys.modules]; " \
           "assert not bad, bad"
    root = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": root})


def _with_manifest(tmp_path, good, edit) -> Path:
    """`good` with its manifest.json edited by hand (members and their hashes untouched)."""
    with tarfile.open(good) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar}
    manifest = json.loads(files["manifest.json"])
    edit(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()
    out = tmp_path / "edited.lcsa"
    with tarfile.open(out, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _set(path, value):
    def edit(manifest):
        *keys, last = path
        node = manifest
        for k in keys:
            node = node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set(["levels"], "0,1"), "levels must be a list of level objects, got '0,1'"),
    (_set(["members", "lib/level0.so"], "abc123"), "members['lib/level0.so'] must be"),
    (_set(["levels", 0, "index"], KeyError), "levels[0]: a level without an index"),
    (_set(["levels", 0, "alpha"], "1.0"), "levels[0]: alpha must be a number, got '1.0'"),
])
def test_hand_edited_manifest_is_one_line_error(good, tmp_path, edit, message):
    from click.testing import CliRunner

    from lcs.cli import cli

    edited = _with_manifest(tmp_path, good, edit)
    with pytest.raises(art.ArtifactError) as caught:
        art.open_artifact(edited)
    assert message in str(caught.value)
    result = CliRunner().invoke(cli, ["info", str(edited)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_version_1_manifest_without_kind_is_read(good, tmp_path):
    def edit(manifest):
        manifest["format_version"] = 1
        del manifest["kind"]
        manifest["strategy"] = "firmware"
    with pytest.raises(art.ArtifactError, match="firmware artifact without its firmware section"):
        art.open_artifact(_with_manifest(tmp_path, good, edit))
    def edit_cpu(manifest):
        manifest["format_version"] = 1
        del manifest["kind"]
    old = art.open_artifact(_with_manifest(tmp_path, good, edit_cpu))
    assert old.kind == "cpu"


# -- sparse levels: bitmask + nonzeros ------------------------------------------------------------------------

def _sparse_artifact(tmp_path, tamper=None, encoding=None):
    """A level whose 16x8 weight is 90 % zeros, stored by encode_weights; `tamper(stored arrays)` edits the file."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    bias = np.ones(8, np.float32)
    data, enc = art.encode_weights({"w": w, "b": bias})
    if tamper is not None:
        stored = art.load_npz(data)
        tamper(stored)
        data = art.npz_bytes(stored)
    manifest = _manifest()
    manifest["modules"]["lib/level0.so"]["params"] = [{"name": "w", "shape": [16, 8], "dtype": "float32"},
                                                      {"name": "b", "shape": [8], "dtype": "float32"}]
    manifest["levels"][0]["weights_encoding"] = enc if encoding is None else encoding
    members = {**_members(), "weights/level0.npz": data}
    return art.write_artifact(tmp_path / "s.lcsa", manifest, members), w, bias, enc


def test_sparse_weights_round_trip_and_take_bytes_by_nonzeros(tmp_path):
    path, w, bias, enc = _sparse_artifact(tmp_path)
    assert enc == {"format": "bitmask", "sparse": ["w"]}  # the 8-element bias stays dense
    a = art.open_artifact(path)
    got = a.level_weights(a.levels[0])
    np.testing.assert_array_equal(got["w"], w)
    np.testing.assert_array_equal(got["b"], bias)
    stored = a.read_npz(a.levels[0].weights)
    assert stored["w|mask"].nbytes + stored["w|values"].nbytes < 0.2 * w.nbytes
    dense, none = art.encode_weights({"w": np.ones((16, 8), np.float32)})
    assert none is None and list(art.load_npz(dense)) == ["w"]


@pytest.mark.parametrize("tamper,encoding,message", [
    (lambda s: s.update({"w|values": s["w|values"][:-1]}), None, "the mask wants float32 [17]"),
    (lambda s: s.update({"w|values": s["w|values"].astype(np.float64)}), None, "the mask wants float32"),
    (lambda s: s.update({"w|mask": s["w|mask"][:-1]}), None, "want uint8 [16]"),
    (lambda s: s.pop("w|mask"), None, "needs exactly 'w|mask' and 'w|values'"),
    (None, {"format": "bitmask", "sparse": ["nope"]}, "'nope' is not a parameter"),
])
def test_hostile_sparse_weights_are_one_line_refusals(tmp_path, tamper, encoding, message):
    path, *_ = _sparse_artifact(tmp_path, tamper, encoding)
    a = art.open_artifact(path)
    with pytest.raises(art.ArtifactError) as caught:
        a.level_weights(a.levels[0])
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("encoding,message", [
    ({"format": "csr", "sparse": ["w"]}, "weights_encoding.format must be one of bitmask"),
    ({"format": "bitmask", "sparse": "w"}, "weights_encoding.sparse must be a list"),
])
def test_unknown_sparse_encoding_is_refused_on_open(tmp_path, encoding, message):
    path, *_ = _sparse_artifact(tmp_path)
    edited = _with_manifest(tmp_path, path, _set(["levels", 0, "weights_encoding"], encoding))
    with pytest.raises(art.ArtifactError) as caught:
        art.open_artifact(edited)
    assert message in str(caught.value)


def test_level_tolerance_widens_for_quantized_float_levels_only():
    """fp32 levels: float rounding; quantized activations: one grid step may flip; an integer build's reference is
    exact, so its tolerance stays 0 whatever the level (a falsy 0.0 once read as "unset" and became 1e-4)."""
    from types import SimpleNamespace

    from lcs.deploy import level_tolerance

    assert art.level_atol(None) == art.FLOAT_ATOL and art.level_atol(5) == art.GRID_ATOL
    assert art.level_atol(8, 0.0) == 0.0 and art.level_atol(None, 0.0) == 0.0
    cpu = lambda atol: SimpleNamespace(kind="cpu", manifest=SimpleNamespace(atol=atol, firmware=None))  # noqa: E731
    assert level_tolerance(cpu(0.0), SimpleNamespace(bits=8)) == 0.0
    assert level_tolerance(cpu(None), SimpleNamespace(bits=None)) == art.FLOAT_ATOL
    assert level_tolerance(cpu(1e-4), SimpleNamespace(bits=3)) == art.GRID_ATOL
