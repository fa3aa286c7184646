"""A toy board and level profile shared by the simulate tests (a plain module, not a test module)."""

from __future__ import annotations

from pathlib import Path

from lcs.simulate.model import BoardPower

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "traces"
HEADER = "t_s,battery_pct,cpu_load,power_budget_mw"

# host.json: idle 5000 mW, active 25000 mW, 2 cores -> one busy core adds 10000 mW.
HOST = BoardPower(name="host", cores=2, clock_hz=2.5e9, idle_mw=5000.0, active_mw=25000.0)
# At the default 100 ms period these cost 5, 15 and 30 mW on the host.
LEVELS = [
    {"index": 0, "alpha": 0.0, "label": "small", "accuracy": 0.90, "latency_ms": 0.05},
    {"index": 1, "alpha": 0.5, "label": "medium", "accuracy": 0.95, "latency_ms": 0.15},
    {"index": 2, "alpha": 1.0, "label": "large", "accuracy": 0.97, "latency_ms": 0.30},
]
