"""Trace scaling: `lcs simulate` on traces of 10^4 .. 10^7 rows, wall seconds and peak RSS (not a timed test).

    python benchmarks/trace_scaling.py [--rows 10000,100000,1000000,10000000] [--policy greedy]
                                       [--out benchmarks/results/trace_scaling.json]

Writes a synthetic trace of each length (1 s samples, a slow discharge, noisy load and budget), then runs the
whole CLI (`lcs simulate --trace T --profile P --out DIR`: parsing, the chunked replay (lcs/simulate/batch.py)
with the greedy policy and the always-densest replay beside it, timeline.csv, summary.json, the decimated plot)
in a child process, timed by the wall clock and by its CPU time (user + system,
the fairer number on a shared machine); peak RSS is that child's ru_maxrss (os.wait4). Also records the
machine's load average, since other processes share the CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcs import atomic  # noqa: E402

LEVELS = [{"index": i, "alpha": i / 4, "label": f"level {i}", "accuracy": 0.8 + 0.04 * i, "latency_ms": 0.03 + 0.05 * i}
          for i in range(5)]


def write_trace(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        fh.write("t_s,battery_pct,cpu_load,power_budget_mw\n")
        chunk = []
        for i in range(rows):
            chunk.append(f"{i},{100 - 90 * i / rows:.3f},{min(1.0, max(0.0, rng.gauss(0.3, 0.2))):.2f},"
                         f"{max(0.0, rng.gauss(8.0, 3.0)):.1f}\n")
            if len(chunk) == 100_000:
                fh.write("".join(chunk))
                chunk = []
        fh.write("".join(chunk))


def run_once(trace: Path, profile: Path, out: Path, policy: str) -> tuple[float, float, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "lcs", "simulate", "--trace", str(trace), "--profile", str(profile),
           "--out", str(out), "--policy", policy, "--json"]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"lcs simulate failed ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0  # KiB -> MiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,1000000,10000000")
    parser.add_argument("--policy", default="greedy")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trace_scaling.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="lcs-trace-bench-") as tmp:
        tmp = Path(tmp)
        profile = tmp / "profile.json"
        profile.write_text(json.dumps({"target": {"name": "host"}, "levels": LEVELS}))
        for rows in (int(r) for r in args.rows.split(",")):
            trace = tmp / f"trace{rows}.csv"
            write_trace(trace, rows)
            load_before = os.getloadavg()[0]
            seconds, cpu, rss = run_once(trace, profile, tmp / f"out{rows}", args.policy)
            row = {"rows": rows, "csv_mb": round(trace.stat().st_size / 2**20, 1), "seconds": round(seconds, 2),
                   "cpu_s": round(cpu, 2), "us_per_row": round(1e6 * seconds / rows, 2),
                   "cpu_us_per_row": round(1e6 * cpu / rows, 2), "peak_rss_mb": round(rss, 1),
                   "timeline_mb": round((tmp / f"out{rows}" / "timeline.csv").stat().st_size / 2**20, 1),
                   "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2)}
            results.append(row)
            print(json.dumps(row), flush=True)
            trace.unlink()
            for f in (tmp / f"out{rows}").iterdir():
                f.unlink()
    report = {"benchmark": "trace_scaling", "machine": platform.platform(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "policy": args.policy, "results": results}
    atomic.write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
