"""Simulate throughput: trace steps per second in model-only mode, per policy (not a timed test).

    python benchmarks/simulate.py [--steps 200000] [--levels 14] [--out benchmarks/results/simulate.json]

Builds a synthetic trace in memory (noisy load and budget, a slow discharge), then times the replay
loop alone and the whole `lcs.simulate.simulate` call (CSV parsing + replay, no plot) for each
built-in policy. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcs import atomic  # noqa: E402
from lcs.simulate import simulate  # noqa: E402
from lcs.simulate.model import BoardPower, CostModel, Workload  # noqa: E402
from lcs.simulate.policies import POLICIES, make_policy  # noqa: E402
from lcs.simulate.profile import profile_from_dict  # noqa: E402
from lcs.simulate.runner import replay  # noqa: E402
from lcs.simulate.trace import load_trace  # noqa: E402


def synthetic_levels(n: int) -> list[dict]:
    return [{"index": i, "alpha": i / max(1, n - 1), "label": f"level {i}", "accuracy": 0.80 + 0.18 * i / max(1, n - 1),
             "latency_ms": 0.03 + 0.1 * i / max(1, n - 1)} for i in range(n)]


def write_trace(path: Path, steps: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = ["t_s,battery_pct,cpu_load,power_budget_mw"]
    for i in range(steps):
        lines.append(f"{i},{100 - 90 * i / steps:.4f},{min(1.0, max(0.0, rng.gauss(0.3, 0.2))):.3f},"
                     f"{max(0.0, rng.gauss(8.0, 3.0)):.2f}")
    path.write_text("\n".join(lines) + "\n")


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--levels", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "simulate.json")
    args = parser.parse_args()

    levels = synthetic_levels(args.levels)
    board = BoardPower(name="host", cores=2, clock_hz=2.5e9, idle_mw=5000.0, active_mw=25000.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trace_path, profile_path = Path(tmp) / "trace.csv", Path(tmp) / "profile.json"
        write_trace(trace_path, args.steps)
        profile_path.write_text(json.dumps({"target": {"name": "host"}, "levels": levels}))
        parse_s = best_of(lambda: load_trace(trace_path), args.repeats)
        trace = load_trace(trace_path)
        for name in sorted(POLICIES):
            model = CostModel(profile_from_dict({"levels": levels}, "bench"), board, Workload())
            loop_s = best_of(lambda: replay(trace, model, make_policy(name), capacity_mwh=3700.0), args.repeats)
            whole_s = best_of(lambda: simulate(trace_path, profile=profile_path, policy=name), args.repeats)
            rows.append({"policy": name, "steps": args.steps, "levels": args.levels,
                         "replay_steps_per_s": args.steps / loop_s, "end_to_end_steps_per_s": args.steps / whole_s,
                         "parse_steps_per_s": args.steps / parse_s})

    print(f"{'policy':<12} {'replay steps/s':>15} {'parse+replay steps/s':>21} {'parse only steps/s':>19}")
    for r in rows:
        print(f"{r['policy']:<12} {r['replay_steps_per_s']:>15,.0f} {r['end_to_end_steps_per_s']:>21,.0f} "
              f"{r['parse_steps_per_s']:>19,.0f}")
    result = {"benchmark": "simulate", "python": platform.python_version(), "machine": platform.machine(),
              "mode": "model-only", "rows": rows}
    atomic.write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
