"""`lcs build` / `lcs info`: real TVM builds of tiny checkpoints, checked against the torch subspace model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lcs import artifact as art
from lcs.cli import cli

import tvm  # noqa: F401  (TVM is part of the test install: a missing one must fail, not skip)
pytestmark = pytest.mark.tvm
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpts(train_tiny):
    return {f: train_tiny(f, "point" if f == "quantization" else "line")
            for f in ("unstructured", "structured", "quantization")}


def subspace_outputs(ckpt_path: Path, alpha: float, xs: np.ndarray) -> np.ndarray:
    from lcs import checkpoint

    model = checkpoint.load(ckpt_path).model
    model.set_alpha(alpha)
    with torch.no_grad():
        return np.stack([model(torch.from_numpy(x)).numpy() for x in xs])


def run_cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_structured_per_level_matches_subspace(ckpts, tmp_path):
    from lcs.runtime import Runtime

    out = tmp_path / "s.lcsa"
    code, text = run_cli("build", ckpts["structured"], "--target", "host", "--levels", "width=0.25,1.0",
                         "--no-progress", "-o", out)
    assert code == 0, text
    a = art.open_artifact(out, expect_target="host")
    m = a.manifest.raw
    assert m["strategy"] == "per-level" and m["tvm_version"].startswith("0.27")
    assert len(m["modules"]) == 2  # widths change shapes: one module each
    assert [lv.width for lv in a.levels] == [0.25, 1.0]
    assert all(lv.latency_ms > 0 and lv.max_abs_diff <= 1e-4 for lv in a.levels)
    # training stores an evaluation at the family's grid in the checkpoint; the manifest carries it
    from lcs import checkpoint

    metrics = {round(r["alpha"], 9): r["accuracy"] for r in checkpoint.load(ckpts["structured"]).metrics["eval"]}
    assert [lv.accuracy for lv in a.levels] == [metrics[0.0], metrics[1.0]]
    assert m["config"]["subspace"]["family"] == "structured" and m["compression_map"]["family"] == "structured"
    # the width-0.25 module really is narrower
    p0, p1 = (m["modules"][lv.library]["params"][0]["shape"] for lv in a.levels)
    assert p0[0] < p1[0]
    rt = Runtime(a)
    assert [mod["executor"] for mod in m["modules"].values()] == ["static", "static"]
    assert rt.executors == ["static", "static"]  # lcs's C executor, no Relax VM
    xs = a.reference()["input"]
    for index, alpha in enumerate((0.0, 1.0)):
        got = np.stack([rt.run(x, level=index) for x in xs])
        np.testing.assert_allclose(got, subspace_outputs(ckpts["structured"], alpha, xs), atol=1e-4, rtol=0)


def test_quantized_weights_as_input_store_int8(ckpts, tmp_path):
    from lcs.runtime import Runtime

    out = tmp_path / "q.lcsa"
    code, text = run_cli("build", ckpts["quantization"], "--target", "host", "--strategy", "weights-as-input",
                         "--levels", "bits=3,bits=8", "--no-progress", "-o", out)
    assert code == 0, text
    a = art.open_artifact(out)
    assert len(a.manifest.raw["modules"]) == 1
    assert {lv.library for lv in a.levels} == {"lib/module0.so"}
    w3, w8 = (a.read_npz(lv.weights) for lv in a.levels)
    codes = [k for k in w3 if k.endswith(".codes")]
    assert codes and all(w3[k].dtype == np.int8 for k in codes)
    assert np.abs(w3[codes[0]]).max() <= 4 < np.abs(w8[codes[0]]).max()  # 3-bit grid vs 8-bit grid
    # int8 codes are 4x smaller than the fp32 weights per level
    per_level = tmp_path / "qp.lcsa"
    assert run_cli("build", ckpts["quantization"], "--target", "host", "--levels", "bits=8", "--no-progress",
                   "-o", per_level)[0] == 0
    fp32 = art.open_artifact(per_level).read_npz("weights/level0.npz")
    layer = codes[0][: -len(".codes")]
    fp32_name = next(k for k in fp32 if k.startswith(layer) and k.endswith("weight"))
    assert fp32[fp32_name].nbytes == 4 * w8[codes[0]].nbytes
    rt = Runtime(a)
    assert rt.executors == ["static", "static"]  # one library, rebound per level: int8 codes dequantized in it
    xs = a.reference()["input"]
    for index, alpha in enumerate((1 / 6, 1.0)):
        got = np.stack([rt.run(x, level=index) for x in xs])
        np.testing.assert_allclose(got, subspace_outputs(ckpts["quantization"], alpha, xs), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def host_unstructured(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("u") / "u.lcsa"
    code, text = run_cli("build", ckpts["unstructured"], "--target", "host", "--levels", "keep=0.1,0.5,1.0",
                         "--no-progress", "-o", out)
    assert code == 0, text
    return out


def test_accuracy_from_lcs_eval_results(ckpts, tmp_path):
    code, text = run_cli("eval", ckpts["unstructured"], "--levels", "0.5,1.0", "--out", tmp_path / "ev")
    assert code == 0, text
    out = tmp_path / "u.lcsa"
    code, text = run_cli("build", ckpts["unstructured"], "--target", "host", "--levels", "0.5,1.0",
                         "--accuracy", tmp_path / "ev" / "results.json", "--no-progress", "-o", out)
    assert code == 0, text
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [lv.accuracy for lv in art.open_artifact(out).levels] == [r["accuracy"] for r in rows[:2]]
    code, text = run_cli("build", ckpts["unstructured"], "--target", "host", "--accuracy", out, "--no-progress",
                         "-o", tmp_path / "x.lcsa")
    assert code == 2 and "not a results.json" in text


def test_unstructured_levels_share_one_module(host_unstructured):
    a = art.open_artifact(host_unstructured)
    assert len(a.manifest.raw["modules"]) == 1 and len(a.levels) == 3
    w = [a.level_weights(lv) for lv in a.levels]
    zeros = [float(np.mean(x["features.1.0.weight"] == 0)) for x in w]
    assert zeros[0] > 0.85 and zeros[2] < 0.05
    # sparse levels are stored as bitmask + nonzeros: their bytes follow the nonzeros, the dense level's do not
    sizes = [a.manifest.member_size(lv.weights) for lv in a.levels]
    assert "features.1.0.weight" in a.levels[0].weights_encoding["sparse"] and a.levels[2].weights_encoding is None
    assert sizes[0] < sizes[1] < sizes[2] and sizes[0] < 0.6 * sizes[2], sizes  # npz headers weigh on 4 channels
    assert a.manifest.raw["levels"][0]["weights_encoding"]["format"] == "bitmask"


def test_per_level_weights_stored_channels_last(ckpts, host_unstructured):
    """Per-level modules run NHWC convolutions; their kernels are transposed once at build time, not per call."""
    from lcs import checkpoint
    from tvm_build.graph import level_network

    a = art.open_artifact(host_unstructured)
    (module,) = a.manifest.raw["modules"].values()
    assert module["layout"] == "NHWC"
    spec = next(p for p in module["params"] if p["name"] == "features.1.0.weight")
    assert spec["from_torch"] == "permute_dims(2,3,1,0)"
    net = level_network(checkpoint.load(ckpts["unstructured"]).model, a.levels[1].alpha, torch.zeros(1, 1, 8, 8))
    stored = a.level_weights(a.levels[1])["features.1.0.weight"]
    assert list(stored.shape) == spec["shape"]
    np.testing.assert_array_equal(stored, net.features[1][0].weight.numpy().transpose(2, 3, 1, 0))


def test_channels_last_calls_no_transpose_kernel(ckpts):
    """ConvertLayout leaves an NHWC -> NCHW transpose before the classifier's flatten; it only moves axes of extent 1,
    so it must run as a reshape (a view), and the module must still match torch."""
    from tvm import relax

    from lcs import checkpoint
    from tvm_build import compile as tc
    from tvm_build import export
    from tvm_build.graph import export_order, level_network, param_arrays
    from tvm_build.target import host_target

    x = torch.randn(1, 1, 8, 8)
    net = level_network(checkpoint.load(ckpts["structured"]).model, 0.5, x)
    mod, ep = export.to_relax(net, (x,))
    converted = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)["main"].script()
    assert "R.permute_dims(lv" in converted  # the activation transpose ConvertLayout inserts before the flatten
    lifted = export.ChannelsLast(mod, export_order(ep))
    text = lifted.main["main"].script()
    assert "R.permute_dims(" not in text and text.count("R.reshape(") >= 1, text
    arrays = param_arrays(net)
    weights = lifted.weights({name: arrays[name] for name in export_order(ep)})
    executable = tc.compile_module(lifted.main, host_target())
    from tvm.runtime.vm import VirtualMachine

    dev = tvm.cpu()
    got = VirtualMachine(executable, dev)["main"](
        tvm.runtime.tensor(x.numpy(), dev), *[tvm.runtime.tensor(a, dev) for a in weights.values()]).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-5)


def test_info_table_and_json(host_unstructured):
    code, text = run_cli("info", host_unstructured, "--json")
    assert code == 0
    info = json.loads(text)
    assert info["target"] == "host" and [lv["label"] for lv in info["levels"]][1] == "50.0% sparse"
    assert info["modules"]["lib/module0.so"]["executor"] == "static"
    code, text = run_cli("info", host_unstructured)
    assert code == 0 and "50.0% sparse" in text and "lcs-artifact" in text
    assert "module0.so with lcs's static executor" in text


def test_alpha_input_blends_in_the_graph(ckpts, tmp_path):
    from lcs.runtime import Runtime

    out = tmp_path / "a.lcsa"
    code, text = run_cli("build", ckpts["unstructured"], "--target", "host", "--strategy", "alpha-input",
                         "--levels", "keep=0.1,0.6", "--no-progress", "-o", out)
    assert code == 0, text
    a = art.open_artifact(out)
    (module,) = a.manifest.raw["modules"].values()
    assert module["extra_inputs"] == [{"name": "alpha", "shape": [1], "dtype": "float64"}]
    assert {lv.weights for lv in a.levels} == {"weights/endpoints.npz"}  # endpoints stored once
    assert any(name.endswith("weight1") for name in a.read_npz("weights/endpoints.npz"))
    rt = Runtime(a)
    assert rt.executors == ["static", "static"]  # the blend runs once per switch, in the executor's lcs_bind
    xs = a.reference()["input"]
    for index, alpha in [(0, 0.1), (1, 0.6), (0, 0.1)]:  # back to 0: the blend is redone
        got = np.stack([rt.run(x, level=index) for x in xs])
        np.testing.assert_allclose(got, subspace_outputs(ckpts["unstructured"], alpha, xs), atol=1e-4, rtol=0)


def test_alpha_input_refuses_quantization(ckpts, tmp_path):
    code, text = run_cli("build", ckpts["quantization"], "--target", "host", "--strategy", "alpha-input",
                         "--no-progress", "-o", tmp_path / "x.lcsa")
    assert code == 2 and "unstructured family only" in text and text.count("\n") == 1


def test_structured_weights_as_input_refused(ckpts, tmp_path):
    code, text = run_cli("build", ckpts["structured"], "--target", "host", "--strategy", "weights-as-input",
                         "--no-progress", "-o", tmp_path / "x.lcsa")
    assert code == 2 and "per-level" in text and "Traceback" not in text
    assert not (tmp_path / "x.lcsa").exists()


def test_graphs_the_static_executor_cannot_plan_run_on_the_vm(ckpts, tmp_path, monkeypatch):
    from lcs.runtime import Runtime
    from tvm_build import cpu_executor
    from tvm_build.static_plan import CodegenError

    def refuse(mod):
        raise CodegenError("the static executor only runs call_tir and reshape bindings, found: R.call_dps_packed")

    monkeypatch.setattr(cpu_executor, "plan_module", refuse)
    out = tmp_path / "vm.lcsa"
    code, text = run_cli("build", ckpts["unstructured"], "--target", "host", "--levels", "keep=0.5,1.0",
                         "--no-progress", "-o", out)
    assert code == 0, text
    a = art.open_artifact(out)
    (module,) = a.manifest.raw["modules"].values()
    assert module["executor"] == "vm" and "call_dps_packed" in module["why_not_static"]
    assert "module0.so on the Relax VM (the static executor only runs" in run_cli("info", out)[1]
    rt = Runtime(a)
    assert rt.executors == ["vm", "vm"]
    assert max(rt.check()) <= 1e-4 and rt.time(0, number=2, repeat=2) > 0


def test_verification_failure_writes_nothing(ckpts, tmp_path, monkeypatch):
    from tvm_build import verify

    monkeypatch.setattr(verify, "ATOL", -1.0)  # any difference at all now fails
    code, text = run_cli("build", ckpts["unstructured"], "--target", "host", "--levels", "1.0", "--no-progress",
                         "-o", tmp_path / "x.lcsa")
    assert code == 2 and "differ from torch" in text and "level 0 (alpha 1)" in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,expect", [
    (["--target", "nope"], "valid targets: host"),
    (["--target", "host", "--levels", "keep=2"], "outside the trained range"),
    (["--target", "host", "--levels", "width=0.5"], "does not fit the unstructured family"),
    (["--target", "rasp4", "--tune", "4"], "needs the board"),
    (["--target", "host", "--threads", "0"], "--threads wants a count >= 1"),
    (["--target", "host-sim", "--threads", "2"], "--threads is for CPU boards"),
])
def test_bad_build_input(ckpts, tmp_path, args, expect):
    code, text = run_cli("build", ckpts["unstructured"], *args, "--no-progress", "-o", tmp_path / "x.lcsa")
    assert code == 2 and expect in text and text.count("\n") == 1, text
    assert not (tmp_path / "x.lcsa").exists()


def test_not_an_lcs_checkpoint(tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": 1}        ')
    code, text = run_cli("build", fake, "--target", "host", "--no-progress", "-o", tmp_path / "x.lcsa")
    assert code == 2 and "not an lcs checkpoint" in text
    assert not (tmp_path / "x.lcsa").exists()


def test_missing_cross_compiler_names_package(ckpts, tmp_path, monkeypatch):
    from tvm_build import target as tt

    monkeypatch.setattr(tt.shutil, "which", lambda name: None)
    code, text = run_cli("build", ckpts["unstructured"], "--target", "rasp4", "--no-progress", "-o", tmp_path / "x")
    assert code == 2 and "gcc-aarch64-linux-gnu" in text and "aarch64-linux-gnu-gcc" in text


def test_bad_artifacts_one_line(host_unstructured, tmp_path):
    data = host_unstructured.read_bytes()
    (tmp_path / "cut.lcsa").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x55
    (tmp_path / "flip.lcsa").write_bytes(bytes(flipped))
    for name, expect in (("cut.lcsa", "truncated"), ("flip.lcsa", "sha256")):
        code, text = run_cli("info", tmp_path / name)
        assert code == 2 and expect in text and text.count("\n") == 1, text
    code, text = run_cli("info", host_unstructured, "--target", "rasp4")
    assert code == 2 and "built for target 'host', not 'rasp4'" in text


def test_cross_builds_for_the_pis(ckpts, tmp_path):
    for target, machine in (("rasp4", b"\xb7\x00"), ("rasp3", b"\x28\x00")):  # rasp4-32 builds like rasp3
        out = tmp_path / f"{target}.lcsa"
        code, text = run_cli("build", ckpts["structured"], "--target", target, "--levels", "0.0", "--no-progress",
                             "-o", out)
        assert code == 0, text
        a = art.open_artifact(out, expect_target=target)
        lib = a.read(a.levels[0].members["library"])
        assert lib[:4] == b"\x7fELF" and lib[18:20] == machine  # e_machine: AArch64 / ARM
        assert a.levels[0].latency_ms is None  # not timed: the board was not reachable
        assert "host" in a.manifest.raw["verification"]["on"]


def test_cli_build_subprocess_filters_tvm_noise(ckpts, tmp_path):
    out = tmp_path / "u.lcsa"
    proc = subprocess.run([sys.executable, "-m", "lcs", "build", str(ckpts["quantization"]), "--target", "host",
                           "--levels", "bits=4", "--no-progress", "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "Scope Saving" not in proc.stderr and "Scope Loaded" not in proc.stderr
    assert "wrote" in proc.stdout


@pytest.mark.slow
def test_tuning_smoke_and_database_reuse(ckpts, tmp_path, monkeypatch):
    monkeypatch.setenv("LCS_CACHE_DIR", str(tmp_path / "cache"))
    from tvm_build.build import build

    # through the CLI: with --json, stdout is the JSON and nothing else (MetaSchedule's logger writes to stdout)
    proc = subprocess.run([sys.executable, "-m", "lcs", "build", str(ckpts["structured"]), "--target", "host",
                           "--levels", "0.0", "--tune", "2", "--threads", "1", "--json", "-o", str(tmp_path / "t1.lcsa")],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)
    assert "Creating JSONDatabase" not in proc.stderr
    assert first["tuning"][0]["reused"] is False and first["tuning"][0]["modules"] == ["lib/module0.so"]
    db = Path(first["tuning"][0]["database"])
    assert db.is_relative_to(tmp_path / "cache" / "tune") and (db / "database_tuning_record.json").stat().st_size > 0
    second = build(ckpts["structured"], "host", tmp_path / "t2.lcsa", levels="0.0", tune=2, threads=1,
                   progress=False)
    assert second["tuning"][0]["reused"] is True and second["tuning"][0]["database"] == str(db)
    assert second["verification"]["max_abs_diff"] <= 1e-4


def test_threads_plan_the_kernels_and_cap_the_runtime(ckpts, tmp_path):
    from lcs import artifact as art
    from lcs.runtime import Runtime
    from tvm_build.build import build

    summary = build(ckpts["structured"], "host", tmp_path / "one.lcsa", levels="1.0", threads=1, progress=False)
    assert summary["runtime"]["threads"] == 1 and list(summary["runtime"]["latency_ms_by_threads"]) == ["1"]
    assert summary["runtime"]["chosen_by"] == "--threads"
    code, text = run_cli("info", tmp_path / "one.lcsa")
    assert code == 0 and "runs on at most 1 thread(s): as built with --threads" in text, text
    assert any("level" in line and "threads" in line for line in text.splitlines()), text  # the per-level column
    a = art.open_artifact(tmp_path / "one.lcsa")
    assert a.manifest.raw["runtime"]["threads"] == 1
    import tvm

    given = tvm.get_global_func("runtime.NumThreads")()
    rt = Runtime(a)
    try:
        assert rt.threads() == 1
    finally:
        rt.set_threads(given)


class FakeTimedRuntime:
    """Per-level latencies (ms) by thread count, as lcs.runtime.Runtime would measure them."""

    def __init__(self, table: dict[int, list[float]], pool: int) -> None:
        self.table, self.pool_threads, self.now = table, pool, pool

    def set_threads(self, count: int) -> None:
        self.now = count

    def time(self, level: int, **timing) -> float:
        return self.table[self.now][level]


def test_each_level_gets_the_fewest_threads_near_its_fastest():
    from tvm_build.verify import modules_to_retune as _modules_to_retune, thread_counts as _thread_counts

    table = {1: [0.060, 0.0070, 0.0298], 2: [0.048, 0.0120, 0.0295], 4: [0.040, 0.0200, 0.0291]}
    chosen, by_threads = _thread_counts(FakeTimedRuntime(table, pool=4), 3, None)
    assert chosen == [4, 1, 1] and by_threads == table  # level 2: 4 threads are within 3 % of 1, so 1
    chosen, by_threads = _thread_counts(FakeTimedRuntime(table, pool=4), 3, 2)  # --threads 2: never more
    assert chosen == [2, 1, 1] and sorted(by_threads) == [1, 2]
    assert _thread_counts(FakeTimedRuntime(table, pool=1), 3, None)[0] == [None] * 3  # one count: no evidence

    class Module:
        def __init__(self, name):
            self.name = name

    modules = [Module("lib/module0.so"), Module("lib/module1.so"), Module("lib/module2.so")]
    rows = [{"index": i, "members": {"library": lib}} for i, lib in
            enumerate(["lib/module0.so", "lib/module1.so", "lib/module2.so", "lib/module2.so"])]
    # module1's only level runs on 1 thread: tune it again for 1; module2's levels disagree (1 and 4): it stays
    assert _modules_to_retune(modules, rows, [4, 1, 1, 4], [4, 4, 4]) == {1: [1]}
    assert _modules_to_retune(modules, rows, [4, 1, 1, 4], [4, 1, 4]) == {}  # already planned for 1
    assert _modules_to_retune(modules, rows, [None] * 4, [4, 4, 4]) == {}


def test_verify_and_time_over_rpc(ckpts, tmp_path):
    import tvm.rpc

    server = tvm.rpc.Server(host="127.0.0.1", port=9190, port_end=9290)
    try:
        out = tmp_path / "r.lcsa"
        code, text = run_cli("build", ckpts["structured"], "--target", "host", "--levels", "1.0",
                             "--rpc", f"127.0.0.1:{server.port}", "--no-progress", "-o", out)
        assert code == 0, text
        a = art.open_artifact(out)
        assert a.manifest.raw["verification"]["on"] == "host over RPC" and a.levels[0].latency_ms > 0
    finally:
        server.terminate()
    code, text = run_cli("build", ckpts["structured"], "--target", "host", "--levels", "1.0", "--rpc", "127.0.0.1:1",
                         "--no-progress", "-o", tmp_path / "x.lcsa")
    assert code == 2 and "cannot reach the board over RPC" in text and not (tmp_path / "x.lcsa").exists()


def test_mcu_boards_dispatch_to_firmware_build(ckpts, tmp_path):
    code, text = run_cli("build", ckpts["quantization"], "--target", "host-sim", "--tune", "2", "--no-progress",
                         "-o", tmp_path / "x.lcsa")
    assert code == 2 and "no MetaSchedule tuning" in text
    out = tmp_path / "fw.lcsa"
    code, text = run_cli("build", ckpts["quantization"], "--target", "host-sim", "--levels", "bits=4,bits=8",
                         "--no-progress", "-o", out)
    assert code == 0, text
    a = art.open_artifact(out, expect_target="host-sim")
    assert a.manifest.raw["strategy"] == "firmware" and [lv.bits for lv in a.levels] == [4, 8]


def test_layout_only_tasks_are_the_ones_not_tuned():
    from tvm_build.tune import _layout_only

    assert _layout_only("transpose") and _layout_only("reshape1") and _layout_only("fused_transpose1_reshape")
    assert not any(_layout_only(n) for n in ("conv2d3", "fused_group_norm_relu", "fused_matmul_add", "mean",
                                             "fused_reshape_add"))


def test_workspace_need_counts_requests_whatever_names_the_device():
    """TVM writes the device id as a literal or as a variable (`dev_id`, ResNet-8's fp32 kernels): both count, or
    the firmware's workspace is too small and every inference is refused."""
    from tvm_build.mcu.lower import _workspace_need

    src = ("TVM_DLL int32_t a(void) {\n  p = TVMBackendAllocWorkspace(1, dev_id, (uint64_t)16384ULL, 2, 32);\n"
           "  q = TVMBackendAllocWorkspace(1, 0, (uint64_t)64ULL, 2, 32);\n}\n"
           "TVM_DLL int32_t b(void) {\n  r = TVMBackendAllocWorkspace(1, dev_id, (uint64_t)32768ULL, 2, 32);\n}\n")
    assert _workspace_need(src) == 32768
    assert _workspace_need(src.split("TVM_DLL int32_t b")[0]) == 16384 + 64
