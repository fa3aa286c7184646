"""Batch-1 CPU latency per compression level: torch eager, ONNX Runtime, ExecuTorch-XNNPACK,
untuned TVM and MetaSchedule-tuned TVM, at 1 and 2 threads; plus the cost of switching level in lcs.runtime.

    PYTHONPATH=. python benchmarks/latency.py [--checkpoint CKPT | --model M [--family F]]
                                              [--levels width=1.0,width=0.5,width=0.25] [--trials 160] [--rounds 5]
                                              [--fresh] [--no-executorch] [--json]

Prints a table (ratios against ONNX Runtime at the same thread count), or with --json the result itself, and writes
benchmarks/results/latency.json (latency-<model>.json with --model, latency-<model>-<family>.json with another
--family). Runtimes: torch eager, ONNX Runtime fp32 and
int8 (static quantization: QDQ, per-channel int8 weights, uint8 activations calibrated on sample inputs),
ExecuTorch-XNNPACK, lcs's TVM build untuned and tuned (--trials 0: untuned only), and lcs's int8 levels
(`lcs build --int8`: integer C kernels, the instruction set and each level's thread count in "lcs_int8").
--model (small-cnn, resnet8, cpreresnet20, mobilenet-v2, resnet18) trains that model for one epoch on 200
generated 32x32 images (cached; latency does not depend on accuracy) in --family (default unstructured: levels
keep=1.0 and keep=0.1, i.e. dense and 90 % sparse; structured: width=1.0,width=0.25).
Each runtime is timed in its own process: TVM's idle worker threads spin after a call and would slow torch down.
ExecuTorch (XNNPACK delegate) comes from scripts/setup-executorch.sh, installed once outside the venv.
TVM artifacts are built through `tvm_build.build` exactly as `lcs build` makes them (per-level modules, NHWC, weights
as inputs); the tuned ones are tuned in that form, one artifact per thread count (`lcs build --threads N --tune T`:
kernels planned and measured on N threads), with the databases cached and reused (under the benchmark's cache).
Without --checkpoint a small CNN (structured width, mnist5k 28x28, width 16) is trained for one epoch: latency does
not depend on accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latency.json"


def median_ms(fn, reps: int, warmup_s: float = 2.0, min_s: float = 1.0) -> float:
    """Median of at least `reps` calls and at least `min_s` seconds of them, after `warmup_s` seconds of calls (a
    fixed count of warm-up calls is a few milliseconds for these models: not enough for a vCPU to settle; two-thread
    runs here take 1-2 s after a model is loaded before their calls settle, e.g. 0.10 -> 0.05 ms)."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        fn()
    times = []
    end = time.perf_counter() + min_s
    while len(times) < reps or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


# -- workers (each runs in its own process) ------------------------------------------------------------------------

def worker_torch(spec: dict) -> dict:
    """torch eager, ONNX Runtime and ExecuTorch on the same materialized networks."""
    import numpy as np
    import torch

    from lcs import checkpoint
    from tvm_build.graph import level_network, sample_inputs

    torch.set_num_threads(spec["threads"])
    ckpt = checkpoint.load(spec["checkpoint"])
    x = torch.from_numpy(sample_inputs(ckpt.config, count=1)[0])
    out: dict = {"torch": [], "onnxruntime": [], "onnxruntime_int8": [], "executorch": [], "notes": []}
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        out["notes"].append("onnxruntime not installed")
    if spec.get("executorch_path"):  # after the venv's own packages: it must not shadow torch or numpy
        sys.path.append(spec["executorch_path"])
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime as EtRuntime

        _unsafe_reset_threadpool(spec["threads"])  # XNNPACK's pool, sized to all cores by default
    except (ImportError, OSError) as exc:  # OSError: its native libraries do not load beside this torch
        EtRuntime = None
        out["notes"].append(f"ExecuTorch not measured: {exc}")
    tmp = Path(spec["scratch"])
    for alpha in spec["alphas"]:
        net = level_network(ckpt.model, alpha, x)
        with torch.no_grad():
            ref = net(x).numpy()
            out["torch"].append(median_ms(lambda: net(x), spec["reps"]))
        if ort is not None:
            path = tmp / f"level_{alpha:.4f}.onnx"
            if not path.exists():
                torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = spec["threads"], 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            xn = x.numpy()
            assert np.abs(sess.run(None, {name: xn})[0] - ref).max() < 1e-4
            out["onnxruntime"].append(median_ms(lambda: sess.run(None, {name: xn}), spec["reps"]))
            out["onnxruntime_int8"].append(_ort_int8(ort, path, sess, spec, x, ckpt, tmp / f"level_{alpha:.4f}",
                                                     out["notes"]))
        if EtRuntime is not None:
            try:
                program = to_edge_transform_and_lower(torch.export.export(net, (x,)),
                                                      partitioner=[XnnpackPartitioner()]).to_executorch()
                path = tmp / f"level_{alpha:.4f}.pte"
                path.write_bytes(program.buffer)
                method = EtRuntime.get().load_program(str(path)).load_method("forward")
                assert np.abs(method.execute([x])[0].numpy() - ref).max() < 1e-4
                out["executorch"].append(median_ms(lambda: method.execute([x]), spec["reps"]))
            except Exception as exc:  # report, do not hide: the table shows the reason
                out["notes"].append(f"ExecuTorch failed at alpha {alpha}: {type(exc).__name__}: {exc}"[:300])
                out["executorch"].append(None)
    return out


def _ort_int8(ort, fp32_path: Path, fp32_session, spec: dict, x, ckpt, stem: Path, notes: list) -> float | None:
    """ONNX Runtime's static int8 quantization of the fp32 level (QDQ, int8 per-channel weights, uint8
    activations calibrated on sample inputs): median ms, with its output drift from fp32 noted."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from tvm_build.graph import sample_inputs

    name = fp32_session.get_inputs()[0].name
    calibration = sample_inputs(ckpt.config, count=16)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: c} for c in calibration])

        def get_next(self):
            return next(self.items, None)

    path = stem.parent / f"{stem.name}.int8.onnx"  # not with_suffix: the alpha in the stem has a dot
    try:
        if not path.exists():
            # convolutions and matmuls only: QDQ on the norms' reshapes stops at "shared mode is not supported for
            # weight" (the models' GroupNorm), and those ops run in fp32 in ORT's int8 models anyway
            quantize_static(str(fp32_path), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv", "Gemm", "MatMul"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = spec["threads"], 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # report, do not hide
        notes.append(f"ORT int8 failed for {fp32_path.name}: {type(exc).__name__}: {exc}"[:300])
        return None
    xn = x.numpy()
    drift = float(np.abs(sess.run(None, {name: xn})[0] - fp32_session.run(None, {name: xn})[0]).max())
    notes.append(f"ORT int8 {path.name}: max abs output drift from fp32 {drift:.3g}")
    return median_ms(lambda: sess.run(None, {name: xn}), spec["reps"])


def worker_tvm(spec: dict) -> dict:
    """Untuned and tuned artifacts through lcs.runtime: per level, and the cost of switching level."""
    import numpy as np

    from lcs.runtime import Runtime

    out: dict = {"lcs_int8": None}
    if spec.get("int8"):  # lcs build --int8: integer C kernels, each level on the threads its build chose (capped here)
        rt = Runtime(spec["int8"])
        x = rt.artifact.reference()["input"][0]
        out["lcs_int8"] = [median_ms(lambda i=i: rt.run(x, level=i), spec["reps"]) for i in range(len(rt.levels))]
        del rt
    for kind in ("untuned", "tuned"):
        if spec[kind] is None:
            out[kind] = None
            continue
        rt = Runtime(spec[kind])
        x = rt.artifact.reference()["input"][0]
        per_level = [median_ms(lambda i=i: rt.run(x, level=i), spec["reps"]) for i in range(len(rt.levels))]
        out[kind] = per_level
        out[f"{kind}_executors"] = rt.executors
        if kind == "tuned" or spec["tuned"] is None:  # switch costs of what ships (tuned if there is one)
            full = int(np.argmax([lv.alpha for lv in rt.levels]))
            n = len(rt.levels)
            # the switch alone (what a device does between inferences)
            out["switch_ms"] = median_ms(lambda: rt.set_level((rt.level + 1) % n), 2000)
            # inference right after a switch vs at a steady level (cache effects included)
            same = median_ms(lambda: rt.run(x, level=full), spec["reps"])
            def round_robin():  # one call per level, each right after a switch; timed as a whole round because
                for i in range(n):  # the median of single calls of a fast and a slow level means nothing
                    rt.run(x, level=i)

            out["alternating_mean_ms"] = median_ms(round_robin, spec["reps"]) / n
            out["steady_full_ms"] = same
            out["steady_mean_ms"] = float(np.mean(per_level))  # what round robin would cost with no switch effect
    return out


def executorch_path() -> str | None:
    """ExecuTorch's install directory (scripts/setup-executorch.sh, cached); None, with the reason on stderr, if it
    cannot be installed: the table then says ExecuTorch was not measured."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup-executorch.sh"), sys.executable],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"ExecuTorch not installed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return proc.stdout.strip().splitlines()[-1]


def run_worker(kind: str, spec: dict, threads: int) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    if kind == "tvm":
        env["TVM_USE_RUNTIME_LIB"] = "1"
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", json.dumps({**spec, "threads": threads})],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- driver --------------------------------------------------------------------------------------------------------

MODELS = ("small-cnn", "resnet8", "cpreresnet20", "mobilenet-v2", "resnet18")
DEFAULT_LEVELS = {"structured": "width=1.0,width=0.25", "unstructured": "keep=1.0,keep=0.1", "quantization": "bits=8"}


def model_checkpoint(cache: Path, model: str, family: str) -> Path:
    """`model` trained one epoch on 200 generated 32x32 images (cached): latency does not depend on accuracy."""
    path = cache / f"bench-{model}-{family}-synthetic200.safetensors"
    if not path.exists():
        from lcs import commands

        config, data = commands.train_config(data_source="synthetic:200", model_name=model, family=family,
                                             epochs=1, batch_size=64)
        commands.train(config, data, path, threads=os.cpu_count(), progress=False)
    return path


def default_checkpoint(cache: Path) -> Path:
    path = cache / "bench-small-cnn-structured.safetensors"
    if not path.exists():
        from lcs import commands

        config, data = commands.train_config(data_source="mnist5k", family="structured", width=16, epochs=1)
        commands.train(config, data, path, progress=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--model", choices=MODELS, help="train this model (cached) instead of the default small CNN")
    parser.add_argument("--family", choices=list(DEFAULT_LEVELS), default="unstructured",
                        help="with --model: the compression family it is trained in")
    parser.add_argument("--levels", default=None,
                        help="default: width=1.0,width=0.25 (small CNN); with --model the family's dense and "
                             "smallest levels")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--trials", type=int, default=160, help="MetaSchedule trials per level module")
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds; each figure is their median")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the benchmark's tuning database first, so the tuning time is measured from scratch")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--no-executorch", action="store_true",
                        help="skip ExecuTorch (otherwise scripts/setup-executorch.sh installs it once, outside the venv)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=["torch", "tvm"])
    parser.add_argument("--spec")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.spec)
        result = worker_torch(spec) if args.worker == "torch" else worker_tvm(spec)
        print(json.dumps(result))
        return

    from lcs import checkpoint
    from lcs.errors import LcsError
    from lcs.subspace.levels import level_alphas
    from tvm_build.build import build
    from tvm_build.tune import cache_dir

    cache = cache_dir() / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    if args.model and args.checkpoint:
        raise SystemExit("error: --model trains its own checkpoint; give --model or --checkpoint")
    if args.model:
        ckpt_path = model_checkpoint(cache, args.model, args.family)
        levels = args.levels or DEFAULT_LEVELS[args.family]
        if args.out == RESULTS:
            family = "" if args.family == "unstructured" else f"-{args.family}"  # another family: its own file
            args.out = RESULTS.with_name(f"latency-{args.model}{family}.json")
        cache = cache / f"{args.model}-{args.family}"  # its artifacts and ONNX files apart from other models'
        cache.mkdir(parents=True, exist_ok=True)
    else:
        ckpt_path = args.checkpoint or default_checkpoint(cache)
        levels = args.levels or DEFAULT_LEVELS["structured"]
    ckpt = checkpoint.load(ckpt_path)
    alphas = level_alphas(levels, ckpt.model.cmap)
    labels = [ckpt.model.cmap.level(a).label() for a in alphas]
    levels_text = ",".join(f"{a!r}" for a in alphas)
    t = time.perf_counter()
    untuned = build(ckpt_path, "host", cache / "untuned.lcsa", levels=levels_text, progress=False)
    untuned_s = time.perf_counter() - t
    sparse_layers = [lv.get("sparse_layers") for lv in untuned["levels"]]
    int8_info = None
    try:  # `lcs build --int8`: the same levels on lcs's integer kernels
        t = time.perf_counter()
        built8 = build(ckpt_path, "host", cache / "int8.lcsa", levels=levels_text, int8=True, progress=False)
        int8_info = {"isa": built8["int8"]["isa"], "compiler": built8["int8"]["compiler"],
                     "level_threads": [lv["threads"] for lv in built8["levels"]],
                     "build_seconds": round(time.perf_counter() - t, 1),
                     "accuracy": [lv["accuracy"] for lv in built8["levels"]]}
    except LcsError as exc:
        int8_info = {"error": str(exc)}
    from lcs.artifact import open_artifact

    built = open_artifact(cache / "untuned.lcsa")
    thread_counts = [int(n) for n in args.threads.split(",")]
    tuned_paths, tuning, tuned_s, level_threads = {}, [], {}, {}
    if args.trials:
        # the benchmark keeps its own tuning database (LCS_CACHE_DIR is read when tuning starts)
        tune_cache = cache / "tuning"
        if args.fresh:
            shutil.rmtree(tune_cache, ignore_errors=True)
        saved, os.environ["LCS_CACHE_DIR"] = os.environ.get("LCS_CACHE_DIR"), str(tune_cache)
        try:
            for threads in thread_counts:  # one artifact per thread count: `lcs build --threads N --tune T`
                t = time.perf_counter()
                path = cache / f"tuned-{threads}t.lcsa"
                tuned = build(ckpt_path, "host", path, levels=levels_text, tune=args.trials, threads=threads,
                              progress=True, log=lambda m: print(m, file=sys.stderr))
                tuned_s[threads] = round(time.perf_counter() - t, 1)
                tuned_paths[threads] = str(path)
                tuning += [{**m, "artifact_threads": threads} for m in tuned["tuning"]]
                level_threads[threads] = [lv["threads"] for lv in tuned["levels"]]
        finally:
            os.environ.pop("LCS_CACHE_DIR")
            if saved is not None:
                os.environ["LCS_CACHE_DIR"] = saved
    spec = {"checkpoint": str(ckpt_path), "alphas": alphas, "reps": args.reps, "scratch": str(cache),
            "untuned": str(cache / "untuned.lcsa"),
            "int8": str(cache / "int8.lcsa") if int8_info and "isa" in int8_info else None,
            "executorch_path": None if args.no_executorch else executorch_path()}
    # the runtimes take turns, round after round; each figure is the median over the rounds (this 2-vCPU machine has
    # bursts where one runtime's whole measurement comes out 1.5x slow)
    rounds: dict[int, list[dict]] = {threads: [] for threads in thread_counts}
    for _ in range(args.rounds):
        for threads in thread_counts:
            tvm_spec = {**spec, "tuned": tuned_paths.get(threads)}
            rounds[threads].append({**run_worker("torch", spec, threads), **run_worker("tvm", tvm_spec, threads)})
    runs = {threads: median_over_rounds(r) for threads, r in rounds.items()}

    import platform

    tuning_s = {t: round(sum(m["tuning_seconds"] for m in tuning if m["artifact_threads"] == t), 1) for t in tuned_paths}

    from tvm.target import codegen

    result = {
        "machine": {"cpu": codegen.llvm_get_system_cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "checkpoint": os.path.basename(str(ckpt_path)), "model": ckpt.config.model.__dict__, "family": ckpt.config.subspace.family,
        "levels": labels, "alphas": alphas,
        "untuned_weights_bytes": [built.manifest.member_size(lv.weights) for lv in built.levels],
        "untuned_csr_layers": [sum(r["kernel"] in ("csr", "csr_chw") for r in s or []) for s in sparse_layers],
        "tuning": {"trials_per_module": args.trials, "modules": tuning,
                   "tuning_seconds_this_run": round(sum(m["seconds"] for m in tuning if not m["reused"]), 1),
                   # each thread count's artifact is tuned on its own (its levels that run on fewer threads are
                   # tuned again for that count); the budget applies to each artifact
                   "tuning_seconds_by_threads": {str(t): s for t, s in tuning_s.items()},
                   "tuning_seconds_first_run": max(tuning_s.values(), default=None),
                   "database_reused": bool(tuning) and all(m["reused"] for m in tuning),
                   "tuned_build_seconds_by_threads": {str(k): v for k, v in tuned_s.items()},
                   "untuned_build_seconds": round(untuned_s, 1)},
        "lcs_int8": int8_info,
        "threads": {str(k): v for k, v in runs.items()},
        # the thread count each level of each tuned artifact runs on (measured by the build; lcs.runtime applies it)
        "level_threads": {str(k): v for k, v in level_threads.items()},
    }
    result["targets"] = check_targets(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
        print(f"wrote {args.out}")


def median_over_rounds(rounds: list[dict]) -> dict:
    """Per figure, the median over the rounds (lists element-wise; notes from the first round)."""
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    out = {}
    for key, first in rounds[0].items():
        if key == "notes" or key.endswith("_executors"):  # words, not figures
            out[key] = first
        elif isinstance(first, list):
            out[key] = [med([r[key][i] for r in rounds]) for i in range(len(first))]
        elif first is None:
            out[key] = None
        else:
            out[key] = med([r[key] for r in rounds])
    out["rounds"] = len(rounds)
    return out


def check_targets(result: dict) -> dict:
    out = {}
    full = 0  # the first level is the full one by default (width 1.0, keep 1.0)
    for threads, r in result["threads"].items():
        ort = r["onnxruntime"]
        ships = r["tuned"] or r["untuned"]
        if ort and ort[full]:
            out[f"untuned_full_vs_onnxruntime_{threads}t"] = round(r["untuned"][full] / ort[full], 3)
            if r.get("onnxruntime_int8") and r["onnxruntime_int8"][full]:
                out[f"onnxruntime_int8_vs_fp32_full_{threads}t"] = round(r["onnxruntime_int8"][full] / ort[full], 3)
            out[f"torch_full_vs_onnxruntime_{threads}t"] = round(r["torch"][full] / ort[full], 3)
        if ort and r["tuned"]:
            out[f"tuned_full_vs_onnxruntime_{threads}t"] = round(r["tuned"][full] / ort[full], 3)
        if r["executorch"] and r["executorch"][full] and r["tuned"]:
            out[f"tuned_full_vs_executorch_{threads}t"] = round(r["tuned"][full] / r["executorch"][full], 3)
        q8 = r.get("lcs_int8")
        if q8 and q8[full]:  # issue 16: int8 full level <= 0.7x the fp32 full level, and <= ORT int8
            out[f"lcs_int8_full_vs_tvm_fp32_{threads}t"] = round(q8[full] / ships[full], 3)
            if r.get("onnxruntime_int8") and r["onnxruntime_int8"][full]:
                out[f"lcs_int8_full_vs_onnxruntime_int8_{threads}t"] = round(q8[full] / r["onnxruntime_int8"][full], 3)
        out[f"smallest_vs_full_{threads}t"] = round(ships[-1] / ships[full], 3)
        out[f"switch_vs_inference_{threads}t"] = round(r["switch_ms"] / ships[full], 5)
        out[f"round_robin_vs_steady_{threads}t"] = round(r["alternating_mean_ms"] / r["steady_mean_ms"], 3)
    # what a plain `lcs build` (no --tune: the default) ships, the figures issue 16's "default build" goals name
    out["default_build"] = {"tunes": False, "build_seconds": result["tuning"]["untuned_build_seconds"],
                            **{f"full_vs_onnxruntime_{t}t": out.get(f"untuned_full_vs_onnxruntime_{t}t")
                               for t in result["threads"]},
                            **{f"smallest_vs_full_{t}t": round(r["untuned"][-1] / r["untuned"][full], 3)
                               for t, r in result["threads"].items()}}
    out["tuning_seconds"] = result["tuning"]["tuning_seconds_first_run"]
    sizes = result.get("untuned_weights_bytes")
    if sizes:
        out["smallest_vs_full_weights_bytes"] = round(sizes[-1] / sizes[full], 3)
    out["goals"] = {"tuned_full_vs_onnxruntime": "<= 1.0", "untuned_full_vs_onnxruntime": "<= 2.0",
                    "default_build.full_vs_onnxruntime": "<= 1.0 (resnet18: <= 1.5); build <= 600 s",
                    "smallest_vs_full": "<= 0.15 (width 0.25); <= 0.5 (90 % sparse)",
                    "smallest_vs_full_weights_bytes": "<= 0.3 (90 % sparse)",
                    "switch_vs_inference": "<= 0.1", "tuning_seconds": "<= 300",
                    "lcs_int8_full_vs_tvm_fp32": "<= 0.7", "lcs_int8_full_vs_onnxruntime_int8": "<= 1.0"}
    return out


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(title="batch-1 latency, median ms (x = ratio to ONNX Runtime at the same thread count)")
    for col in ("threads", "level", "torch eager", "ONNX Runtime", "ORT int8", "ExecuTorch", "TVM untuned",
                "TVM tuned", "lcs int8"):
        table.add_column(col, justify="left" if col == "level" else "right")
    for threads, r in result["threads"].items():
        for i, label in enumerate(result["levels"]):
            ort = r["onnxruntime"][i] if r["onnxruntime"] else None

            def cell(v):
                if v is None:
                    return "-"
                return f"{v:.3f}" + (f" ({v / ort:.2f}x)" if ort else "")

            et = r["executorch"][i] if r["executorch"] else None
            q8 = r["onnxruntime_int8"][i] if r.get("onnxruntime_int8") else None
            table.add_row(threads, label, cell(r["torch"][i]), cell(ort), cell(q8), cell(et), cell(r["untuned"][i]),
                          cell(r["tuned"][i] if r["tuned"] else None),
                          cell(r["lcs_int8"][i] if r.get("lcs_int8") else None))
    console.print(table)
    for threads, r in result["threads"].items():
        console.print(f"{threads} thread(s): level switch {1e3 * r['switch_ms']:.2f} us; inference after a switch "
                      f"(round robin) {r['alternating_mean_ms']:.3f} ms vs {r['steady_mean_ms']:.3f} ms mean of the levels run "
                      f"steadily")
        for note in r.get("notes", []):
            console.print(f"  note: {note}")
    q8 = result.get("lcs_int8") or {}
    console.print(f"lcs int8 (lcs build --int8): {q8.get('isa') or q8.get('error')}, threads per level "
                  f"{q8.get('level_threads')}")
    t = result["tuning"]
    console.print("threads each tuned level runs on (chosen by lcs build): "
                  + ", ".join(f"{k}-thread artifact {v}" for k, v in result.get("level_threads", {}).items()))
    console.print(f"tuning: {t['trials_per_module']} trials per module, one artifact per thread count "
                  f"(lcs build --threads N), seconds when each database was made: {t['tuning_seconds_by_threads']} "
                  f"({t['tuning_seconds_this_run']} s this run, reused now: {t['database_reused']})")
    console.print("targets: " + json.dumps({k: v for k, v in result["targets"].items() if k != "goals"}))


if __name__ == "__main__":
    main()
