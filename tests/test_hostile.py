"""Hostile and heavy input (issue 14): every class answered in one `error:` line, exit 2, no traceback, nothing
left behind; no code from data runs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from lcs.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, *needles):
    """One line starting `error:`, exit 2, and no exception escaped (CliRunner would hold it)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- 1. a CIFAR-10 batch never runs code ----------------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what an attacker's batch does: call os.system on load
        return os.system, (f"touch {self.marker}",)


def _cifar(root, batch_override=None, protocol=pickle.DEFAULT_PROTOCOL):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"x", b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, 4)], b"filenames": [b"a.png"] * 4}
        if batch_override and name in batch_override:
            batch = batch_override[name]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return root


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_plain_cifar_batches_load_through_the_restricted_unpickler(tmp_path, protocol):
    from lcs.config import DataConfig
    from lcs.data import load_data

    d = load_data(DataConfig(f"cifar10:{_cifar(tmp_path, protocol=protocol)}"))
    assert (d.info.train_size, d.info.test_size) == (20, 4)
    x, y = d.test[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < 10


def test_crafted_cifar_batch_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = {b"data": _Payload(marker), b"labels": [0]}
    root = _cifar(tmp_path / "c", {"data_batch_3": evil})
    out = tmp_path / "out.safetensors"
    line = refused(run("train", "--data", f"cifar10:{root}", "--epochs", "1", "-o", out, "--no-progress"),
                   "data_batch_3")
    assert "posix.system" in line or "os.system" in line
    assert not marker.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# -- 2. traces: every missing column named, no plotting traceback, streamed ------------------------

LEVELS = [{"index": 0, "alpha": 0.0, "label": "small, fast", "accuracy": 0.9, "latency_ms": 0.05},
          {"index": 1, "alpha": 1.0, "label": "large", "accuracy": 0.97, "latency_ms": 0.3}]


@pytest.fixture
def profile(tmp_path):
    import json

    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"target": {"name": "host"}, "levels": LEVELS}))
    return path


@pytest.mark.parametrize("header,row,missing", [
    ("t_s,battery_pct,power_budget_mw", "{t},90,10", "missing required column cpu_load "),
    ("t_s,power_budget_mw", "{t},10", "missing required columns battery_pct, cpu_load "),
    ("time,load", "{t},0.1", "missing required columns t_s, battery_pct, cpu_load "),
])
def test_trace_missing_columns_are_all_named(tmp_path, profile, header, row, missing):
    trace = tmp_path / "t.csv"
    trace.write_text(header + "\n" + "\n".join(row.format(t=t) for t in range(3)) + "\n")
    out = tmp_path / "out"
    refused(run("simulate", "--trace", trace, "--profile", profile, "--out", out), f"{trace}:1: {missing}")
    assert not out.exists()


@pytest.mark.parametrize("rows,message", [
    (["0,90,0.1,10", "1e308,90,0.1,10"], ":3: column t_s = 1e+308 is outside [0, 1e+12]"),
    (["0,90,0.1,1e308", "1,90,0.1,10"], ":2: column power_budget_mw = 1e+308 is outside [0, 1e+12]"),
])
def test_trace_huge_values_are_one_line_not_a_plotting_traceback(tmp_path, profile, rows, message):
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,battery_pct,cpu_load,power_budget_mw\n" + "\n".join(rows) + "\n")
    out = tmp_path / "deep" / "out"
    refused(run("simulate", "--trace", trace, "--profile", profile, "--out", out), message)
    assert not (tmp_path / "deep").exists()


def test_trace_error_late_in_a_stream_leaves_nothing(tmp_path, profile):
    """Rows are validated as they are replayed: a bad row after thousands of good ones still leaves no
    timeline, and the folder made for the run is removed again."""
    trace = tmp_path / "t.csv"
    good = "".join(f"{t},90,0.1,10\n" for t in range(5000))
    trace.write_text("t_s,battery_pct,cpu_load,power_budget_mw\n" + good + "5000,90,nan,10\n")
    out = tmp_path / "out"
    refused(run("simulate", "--trace", trace, "--profile", profile, "--out", out), ":5002: column cpu_load is NaN")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    refused(run("simulate", "--trace", trace, "--profile", profile, "--out", existing))
    assert sorted(p.name for p in existing.iterdir()) == ["mine.txt"]


def test_streamed_timeline_matches_the_csv_writer_and_plot_is_decimated(tmp_path, profile):
    """The fast row formatter writes what the csv module would, and the plot sees a bounded sample."""
    import csv as csv_module

    from lcs.simulate import simulate
    from lcs.simulate.output import PLOT_POINTS, Decimator, timeline_csv
    from lcs.simulate.runner import replay
    from lcs.simulate.trace import load_trace

    rows = [f"{t},{max(0, 90 - t / 30):.3f},{(t * 7 % 10) / 10},{[1, 6, 40][t % 3]}" for t in range(3000)]
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,battery_pct,cpu_load,power_budget_mw\n" + "\n".join(rows) + "\n")
    result = simulate(trace, profile=profile, out_dir=tmp_path / "out")
    streamed = (tmp_path / "out" / "timeline.csv").read_text()
    from lcs.simulate.model import BoardPower, CostModel, Workload
    from lcs.simulate.policies import make_policy
    from lcs.simulate.profile import load_profile_json
    import targets

    model = CostModel(load_profile_json(profile), BoardPower.from_board(targets.load("host")), Workload())
    records = replay(load_trace(trace), model, make_policy("greedy"), capacity_mwh=3700.0).records
    assert streamed == timeline_csv(records, with_device=False)
    from lcs.atomic import output_mode

    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == {output_mode()}
    states = {r["state"] for r in csv_module.DictReader(streamed.splitlines())}
    assert states >= {"run", "idle"}  # both row templates were exercised
    assert '"small, fast"' in streamed
    assert result.summary["steps"] == 3000
    d = Decimator(points=100)
    for r in records:
        d.add(r)
    sample = d.sample()
    assert len(sample) <= 201 and sample[0] is records[0] and sample[-1] is records[-1]
    assert PLOT_POINTS <= 10_000


@pytest.mark.parametrize("per_step", [False, True], ids=["chunks", "per-step"])
def test_trace_memory_does_not_grow_with_length(tmp_path, profile, monkeypatch, per_step):
    """tracemalloc peak of a streamed replay of 5,000 rows is about that of 500 (it was ~1 KB per row), with
    the plot's sample capped below both lengths as it is below any long trace's, and (the chunked replay) the
    blocks of trace smaller than both, as they are smaller than any long trace."""
    import gc
    import tracemalloc

    from lcs.simulate import output, simulate, trace as trace_module

    monkeypatch.setattr(output, "PLOT_POINTS", 100)
    monkeypatch.setattr(output, "plot_png", lambda *a: b"")  # its input is the capped sample; drawing costs seconds
    monkeypatch.setattr(trace_module, "CHUNK_CHARS", 2048)  # ~100 rows a block

    peaks = []
    for n in (500, 5_000):
        trace = tmp_path / f"t{n}.csv"
        trace.write_text("t_s,battery_pct,cpu_load,power_budget_mw\n" +
                         "".join(f"{t},{90 - t / n:.4f},0.1,{[1, 40][t % 2]}\n" for t in range(n)))
        # imports and caches outside the measure
        simulate(trace, profile=profile, out_dir=tmp_path / f"warm{n}", per_step=per_step)
        gc.collect()  # no collection of earlier tests' garbage inside the measure (it moved the peak by ~0.5 MB)
        tracemalloc.start()
        simulate(trace, profile=profile, out_dir=tmp_path / f"out{n}", per_step=per_step)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + 450_000, peaks  # 4,500 more rows add under 100 B each


# -- 3. input classes answered before any long work ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    r = run("train", "--data", "digits", "--width", "4", "--epochs", "1", "-o", path, "--no-progress")
    assert r.exit_code == 0, r.output
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if training starts: the bad input must be caught before it."""
    import lcs.train

    def boom(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(lcs.train, "train", boom)


def test_corrupt_jpeg_in_an_image_folder_is_one_line(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
    whole = (root / "b" / "5.jpg").read_bytes()
    (root / "b" / "5.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    (root / "a" / "5.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    out = tmp_path / "o.safetensors"
    line = refused(run("train", "--data", root, "--width", "4", "--epochs", "1", "--batch-size", "1", "-o", out,
                       "--no-progress"), "cannot read image")
    assert "5.jpg" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
    (root / "a" / "0.jpg").write_bytes(b"GIF89a garbage")  # the first image, read to learn the size
    refused(run("train", "--data", root, "--epochs", "1", "-o", out, "--no-progress"), "cannot read image", "0.jpg")
    assert not out.exists()


@pytest.mark.parametrize("where,needle", [
    ("file/under.safetensors", "is not a folder"),
    ("/proc/lcs-cannot-write-here.safetensors", "cannot write in /proc"),
])
def test_unwritable_output_is_refused_before_training(tmp_path, no_training, where, needle):
    (tmp_path / "file").write_text("a regular file")
    target = where if where.startswith("/") else tmp_path / where
    refused(run("train", "--data", "digits", "--epochs", "1", "-o", target, "--no-progress"), needle)
    assert (tmp_path / "file").read_text() == "a regular file"


@pytest.mark.parametrize("option,value,needle", [
    ("--lr", "nan", "lr must be a finite number"),
    ("--lr", "inf", "lr must be a finite number"),
    ("--lr", "0", "lr must be > 0"),
    ("--weight-decay", "nan", "weight-decay must be a finite number"),
    ("--warmup-epochs", "-inf", "warmup-epochs must be a finite number"),
    ("--beta", "nan", "beta must be a finite number"),
])
def test_non_finite_hyperparameters_are_refused(tmp_path, no_training, option, value, needle):
    out = tmp_path / "o.safetensors"
    refused(run("train", "--data", "digits", option, value, "-o", out, "--no-progress"), needle)
    assert not out.exists()


@pytest.mark.parametrize("levels,needle", [
    ("", "--levels is empty"),
    (" , ", "--levels is empty"),
    ("0.5,,1", "has an empty entry"),
    ("0.5,0.5", "names one level twice: 0.5 and 0.5"),
    ("keep=0.5,0.5", "names one level twice: keep=0.5 and 0.5"),
])
def test_levels_empty_or_duplicate_are_refused(tiny_ckpt, tmp_path, levels, needle):
    refused(run("eval", tiny_ckpt, "--levels", levels, "--out", tmp_path / "ev"), needle)
    assert not (tmp_path / "ev").exists()


def test_eval_out_under_a_file_is_refused_before_evaluating(tiny_ckpt, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(run("eval", tiny_ckpt, "--out", tmp_path / "f" / "ev"), "is not a folder")


# -- 4. checkpoint integrity ---------------------------------------------------------------------

def _tensor_span(path):
    """(start, end) of the tensor bytes in a safetensors file."""
    import struct

    head = path.read_bytes()[:8]
    size = struct.unpack("<Q", head)[0]
    return 8 + size, path.stat().st_size


def test_flipped_tensor_bytes_are_refused_naming_the_file(tiny_ckpt, tmp_path):
    data = bytearray(tiny_ckpt.read_bytes())
    start, end = _tensor_span(tiny_ckpt)
    rng = np.random.default_rng(1)
    for pos in rng.choice(np.arange(start, end), 32, replace=False):
        data[pos] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    refused(run("eval", bad, "--levels", "1"), f"{bad} is corrupt: its tensors do not match the digest")
    art = tmp_path / "a.lcsa"
    refused(run("build", bad, "--target", "host", "-o", art, "--no-progress"), f"{bad} is corrupt")
    assert not art.exists()


def test_checkpoint_without_digest_loads_with_one_warning(tiny_ckpt, tmp_path, capsys):
    """Checkpoints from before the digest: accepted, with a warning naming the file (documented)."""
    from safetensors.torch import load_file, save_file

    from lcs import checkpoint
    from safetensors import safe_open

    with safe_open(str(tiny_ckpt), "pt") as fh:
        meta = dict(fh.metadata())
    assert checkpoint.DIGEST_KEY in meta
    del meta[checkpoint.DIGEST_KEY]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(tiny_ckpt)), str(old), metadata=meta)
    checkpoint.load(old)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {old} has no tensor digest (written by an older lcs); its tensors are not checked "
                   f"for corruption"]


def test_outputs_share_one_file_mode(tiny_ckpt, tmp_path):
    """Checkpoints, eval results and simulate outputs get the mode a plain open() would (0666 less umask)."""
    from lcs.atomic import output_mode

    r = run("eval", tiny_ckpt, "--levels", "1", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tiny_ckpt, *(tmp_path / "ev").iterdir()]}
    assert set(modes.values()) == {output_mode()}, modes


# -- 6. optional signatures ----------------------------------------------------------------------

def _keypair(folder, name):
    """An ed25519 key pair as the documented openssl one-liners write it (PEM PKCS#8 / SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    return _keypair(folder, "mine"), _keypair(folder, "other")


def _runtime(*args):
    import contextlib
    import io

    from lcs.runtime import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def test_verify_key_refuses_unsigned_wrongly_signed_and_tampered(tmp_path, keys):
    from lcs import signing

    (mine, mine_pub), (other, _) = keys
    art = tmp_path / "m.lcsa"
    art.write_bytes(b"pretend artifact: never opened when the signature is refused")
    cases = [("unsigned", None, "is not signed (no m.lcsa.sig beside it)")]
    for case, signer, needle in cases + [("other key", other, "is not signed by the --verify-key key"),
                                         ("tampered", mine, "changed after it was signed")]:
        signing.signature_path(art).unlink(missing_ok=True)
        if signer is not None:
            signing.sign_artifact(art, signer)
        if case == "tampered":
            art.write_bytes(art.read_bytes() + b"#")
        refused(run("deploy", art, "--sim", "host-sim", "--verify-key", mine_pub), needle)
        refused(run("flash", art, "--dry-run", "--verify-key", mine_pub), needle)
        code, err = _runtime(art, "--verify-key", mine_pub)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err, (case, err)
    art.write_bytes(b"pretend artifact")
    signing.sign_artifact(art, mine)
    assert signing.verify_artifact(art, mine_pub)  # the right key over unchanged bytes passes
    refused(run("deploy", art, "--sim", "host-sim", "--verify-key", mine), "is not a")  # past the signature: not a tar


def test_sign_with_a_bad_key_is_refused_before_building(tiny_ckpt, tmp_path, keys):
    (_, mine_pub), _ = keys
    out = tmp_path / "m.lcsa"
    refused(run("build", tiny_ckpt, "--target", "host", "-o", out, "--sign", mine_pub), "is not an unencrypted PEM")
    refused(run("build", tiny_ckpt, "--target", "host", "-o", out, "--sign", tmp_path / "nokey.pem"),
            "cannot read signing key")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.tvm
def test_signed_build_runs_and_a_swapped_member_is_refused(tiny_ckpt, tmp_path, keys):
    """lcs build --sign writes ARTIFACT.sig; the runtime and deploy accept it under --verify-key; an artifact whose
    members were swapped and whose sha256 entries were recomputed (what the hashes alone let through) is refused
    before anything in it runs."""
    import tarfile

    from lcs import artifact as A

    (mine, mine_pub), _ = keys
    art = tmp_path / "m.lcsa"
    r = run("build", tiny_ckpt, "--target", "host", "--levels", "1", "-o", art, "--sign", mine, "--no-progress")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.lcsa.sig").is_file()
    code, err = _runtime(art, "--verify-key", mine_pub)
    assert code == 0, err
    # tamper: rewrite the tar with one member replaced and its manifest entry recomputed
    evil = tmp_path / "evil.lcsa"
    with tarfile.open(art) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = __import__("json").loads(members.pop(A.MANIFEST))
    name = sorted(members)[0]
    members[name] = members[name] + b"\0"
    A.write_artifact(evil, {k: v for k, v in manifest.items() if k != "members"}, members)
    (tmp_path / "evil.lcsa.sig").write_bytes((tmp_path / "m.lcsa.sig").read_bytes())
    A.open_artifact(evil)  # the hashes alone accept it
    code, err = _runtime(evil, "--verify-key", mine_pub)
    assert code == 2 and "changed after it was signed" in err


# -- 7. signals clean up; one file mode ----------------------------------------------------------

def _lcs(args, tmp):
    """`lcs ARGS` in its own process, temporary files under `tmp` (TMPDIR), stderr piped."""
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, "-m", "lcs", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, seconds, proc):
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _long_trace(path, rows=2_000_000):
    with open(path, "w") as fh:
        fh.write("t_s,battery_pct,cpu_load,power_budget_mw\n")
        fh.write("".join(f"{t},90,0.1,40\n" for t in range(rows)))
    return path


def test_sigterm_during_simulate_leaves_nothing(tmp_path, profile):
    import signal

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    proc = _lcs(["simulate", "--trace", _long_trace(tmp_path / "t.csv"), "--profile", profile, "--out", out], tmp)
    _wait_for(lambda: out.exists() and any(out.iterdir()), 120, proc)  # the timeline is being written
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM and err.strip() == "interrupted (SIGTERM)", (proc.returncode, err)
    assert not out.exists() and list(tmp.iterdir()) == []


@pytest.mark.slow
@pytest.mark.tvm
def test_sigterm_during_simulate_sim_removes_its_firmware_folder(hostsim_artifact, tmp_path):
    import signal

    lcsa, _ = hostsim_artifact
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    proc = _lcs(["simulate", "--trace", _long_trace(tmp_path / "t.csv", 200_000), "--artifact", lcsa,
                 "--sim", "host-sim", "--out", out], tmp)
    _wait_for(lambda: out.exists() and any(tmp.glob("lcs-sim-*")), 120, proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM and err.strip() == "interrupted (SIGTERM)", (proc.returncode, err)
    assert list(tmp.iterdir()) == [] and not out.exists()


@pytest.mark.slow
@pytest.mark.tvm
def test_sigint_during_a_host_sim_build_is_one_line(tiny_ckpt, tmp_path):
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    art = tmp_path / "m.lcsa"
    proc = _lcs(["build", tiny_ckpt, "--target", "host-sim", "--fp32", "-o", art, "--no-progress"], tmp)
    first = proc.stderr.readline()
    assert "firmware for host-sim" in first, first + proc.stderr.read()
    time.sleep(1.5)  # inside TVM's compiler by now
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, err)
    assert err.strip() == "interrupted (SIGINT)", err
    assert not art.exists() and list(tmp.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.lcsa")] == []


def test_trace_quoted_cells_take_the_csv_path(tmp_path):
    from lcs.simulate.trace import TraceError, load_trace

    path = tmp_path / "q.csv"
    path.write_text('t_s,battery_pct,cpu_load,note\n0,90,0.1,"a, b"\n1,"80",0.2,x\n')
    trace = load_trace(path)
    assert trace.battery_pct == (90.0, 80.0) and trace.cpu_load == (0.1, 0.2)
    path.write_text('t_s,battery_pct,cpu_load,note\n0,90,0.1,"a\nb"\n1,80,0.2,x\n')
    with pytest.raises(TraceError, match="quoted cells must not span lines"):
        load_trace(path)


@pytest.mark.slow
@pytest.mark.tvm
def test_deploy_verify_key_refuses_firmware_swapped_for_a_script(hostsim_artifact, tmp_path, keys):
    """The issue's attack: the firmware member replaced by a shell script, every sha256 entry recomputed. The hashes
    accept it; `--verify-key` refuses it and the script never runs. The genuine, signed artifact deploys."""
    import json
    import shutil
    import tarfile

    from lcs import artifact as A
    from lcs import signing

    (mine, mine_pub), _ = keys
    lcsa, _ = hostsim_artifact
    good = tmp_path / "good.lcsa"
    shutil.copyfile(lcsa, good)
    signing.sign_artifact(good, mine)
    r = run("deploy", good, "--sim", "host-sim", "--verify-key", mine_pub, "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    marker = tmp_path / "ran"
    with tarfile.open(good) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(members.pop(A.MANIFEST))
    candidates = [(lv.get("members") or {}).get("firmware") for lv in manifest["levels"]]
    firmware = next(m for m in candidates + [manifest["firmware"]["binary"]] if m in members)  # what --sim starts
    members[firmware] = f"#!/bin/sh\ntouch {marker}\n".encode()
    evil = tmp_path / "evil.lcsa"
    A.write_artifact(evil, {k: v for k, v in manifest.items() if k != "members"}, members)
    shutil.copyfile(signing.signature_path(good), signing.signature_path(evil))  # the old signature, copied along
    A.open_artifact(evil)  # the sha256 entries alone accept it
    refused(run("deploy", evil, "--sim", "host-sim", "--verify-key", mine_pub), "changed after it was signed")
    signing.sign_artifact(evil, keys[1][0])  # re-signed by someone else
    refused(run("deploy", evil, "--sim", "host-sim", "--verify-key", mine_pub), "is not signed by the --verify-key")
    assert not marker.exists()


def test_a_second_signal_does_not_abort_the_clean_up_of_the_first():
    """The first SIGINT/SIGTERM raises KeyboardInterrupt; one arriving while its clean-up runs is recorded, not raised
    (under load a second one once left a /tmp/lcs-sim-* folder behind), and the first decides the exit status."""
    import signal

    from lcs import interrupts

    cleaned = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.signals_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # during the clean-up: must not raise
                for _ in range(1000):
                    pass
                cleaned = True
    assert cleaned and interrupts.received() == signal.SIGTERM
