"""Regenerate the example traces in this folder (deterministic: fixed seeds, stdlib only).

    python examples/traces/generate.py

Each trace documents itself in `#` comment lines at its top. The columns are those of
`lcs/simulate/trace.py`; power figures are sized for a small CNN answering a 10 Hz sensor
(`lcs simulate` defaults: one request per 100 ms) with the levels of `host_profile.json`, which
cost 2.9 mW (width 0.25) to 12.9 mW (width 1.0) on the `host` board at that rate. For another
board or profile, scale with --period-ms. Battery percentages assume the simulator's default
3700 mWh battery.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ["t_s", "battery_pct", "cpu_load", "power_budget_mw"]


def write(name: str, header: str, extra: list[str], rows: list[list[float]]) -> None:
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()]
    lines.append(",".join(COLUMNS + extra))
    for row in rows:
        lines.append(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    (HERE / name).write_text("\n".join(lines) + "\n")


def clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def battery_discharge() -> None:
    """A battery camera node for 10 hours, one row a minute."""
    rng = random.Random(1)
    rows, battery = [], 100.0
    for minute in range(601):
        hour = minute / 60
        radio = 3 <= minute % 30 < 5  # uplink burst twice an hour: more drain, housekeeping load
        drain_pct_per_min = (0.125 + (0.25 if radio else 0.0)) * rng.uniform(0.85, 1.15)
        load = clamp(0.12 + rng.gauss(0, 0.03) + (0.45 if radio else 0.0), 0.0, 1.0)
        budget = 6.0 if 4 <= hour < 5.5 else 14.0  # thermal throttling in the hot hours
        rows.append([float(minute * 60), round(battery, 3), round(load, 3), budget,
                     "uplink" if radio else ""])
        battery = max(0.0, battery - drain_pct_per_min)
    write("battery_discharge.csv", """
Battery discharge: a battery-powered camera node over 10 hours, one row per minute.
t_s: seconds since start. battery_pct: charge left by the rest of the system (radio, sensor,
  idle power), falling from 100 % to about 13 %; faster during the twice-hourly uplink bursts.
cpu_load: fraction of the CPU taken by other work: about 0.12, 0.57 during an uplink burst.
power_budget_mw: what the power manager lets inference draw: 14 mW, 6 mW while the board is
  thermally throttled (hours 4 to 5.5).
event: extra column, ignored by lcs simulate ("uplink" during a burst).
Try: lcs simulate --trace examples/traces/battery_discharge.csv
  --profile examples/traces/host_profile.json --policy battery
""", ["event"], rows)


def load_bursts() -> None:
    """A shared two-core board for 15 minutes, one row a second, with bursts of competing jobs."""
    rng = random.Random(2)
    rows, jobs_until, burst_load, battery = [], -1, 0.0, 85.0
    for second in range(901):
        if second >= jobs_until and rng.random() < 1 / 45:  # a burst starts about every 45 s
            jobs_until = second + rng.randint(10, 60)
            burst_load = rng.uniform(0.55, 1.0)
        in_burst = second < jobs_until
        load = clamp((burst_load if in_burst else 0.1) + rng.gauss(0, 0.03), 0.0, 1.0)
        budget = max(0.0, 9.0 + rng.gauss(0, 2.0))  # a noisy power estimate around 9 mW
        rows.append([float(second), round(battery, 4), round(load, 3), round(budget, 2), 3 if in_burst else 0])
        battery -= 0.004 + (0.006 if in_burst else 0.0)
    write("load_bursts.csv", """
Bursts of competing load: a shared two-core board for 15 minutes, one row per second.
t_s: seconds since start. battery_pct: slowly falling from 85 %.
cpu_load: about 0.1, jumping to 0.55 to 1.0 while a burst of other jobs runs (10 to 60 s, one
  every 45 s or so). On two cores, load above 0.5 slows inference: latency / (2 * (1 - load)).
power_budget_mw: a noisy estimate around 9 mW (sd 2 mW): greedy switches level often on it,
  hysteresis should not.
jobs: extra column, ignored by lcs simulate (competing jobs running).
Try: --policy hysteresis --deadline-ms 0.25 --period-ms 100 (with host_profile.json): a deadline
  near the slowest level's unloaded latency, so that bursts force cheaper levels.
""", ["jobs"], rows)


def harvest_day() -> None:
    """A solar-powered sensor over one day from midnight, one row every five minutes."""
    rng = random.Random(3)
    rows, battery, cloud = [], 30.0, 1.0
    capacity_mwh, rest_mw, efficiency = 3700.0, 25.0, 0.85
    for i in range(289):
        t = i * 300.0
        hour = t / 3600
        sun = math.sin(math.pi * (hour - 6) / 14) if 6 <= hour <= 20 else 0.0
        cloud = clamp(cloud + rng.gauss(0, 0.12), 0.25, 1.0)  # slowly drifting cloud cover
        harvest = 400.0 * sun ** 1.5 * cloud
        load = clamp(0.08 + rng.gauss(0, 0.02) + (0.8 if 2 <= hour < 2 + 1 / 3 else 0.0), 0.0, 1.0)
        budget = max(3.0, 0.04 * (harvest - rest_mw))  # 4 % of the surplus; 3 mW from the battery at night
        rows.append([t, round(battery, 3), round(load, 3), round(budget, 2), round(harvest, 2)])
        net_mw = harvest * efficiency - rest_mw
        battery = clamp(battery + net_mw * (300 / 3600) / capacity_mwh * 100, 0.0, 100.0)
    write("harvest_day.csv", """
Energy-harvesting day: a solar-powered sensor over 24 hours from midnight, one row per 5 minutes.
t_s: seconds since midnight. battery_pct: charge of a 3700 mWh battery without the inference
  workload: the rest of the system draws 25 mW; a small panel charges it (85 % efficient) from
  sunrise at 06:00 to sunset at 20:00, peaking near 400 mW under drifting clouds.
cpu_load: about 0.08; a maintenance job takes 0.88 from 02:00 to 02:20.
power_budget_mw: the power manager gives inference 4 % of the harvest surplus over the rest of
  the system, and at least 3 mW (what the battery may give at night).
harvest_mw: extra column, ignored by lcs simulate (panel output).
Try: --policy battery, or greedy vs hysteresis on the cloudy afternoon.
""", ["harvest_mw"], rows)


if __name__ == "__main__":
    battery_discharge()
    load_bursts()
    harvest_day()
