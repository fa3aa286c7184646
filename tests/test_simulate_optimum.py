"""The offline optimum against brute force, --compare end to end, trace rescaling, the plan policy."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from lcs.cli import cli
from lcs.simulate import compare as cmp
from lcs.simulate import optimum as opt
from lcs.simulate.model import CostModel, Workload
from lcs.simulate.policies import make_policy
from lcs.simulate.profile import profile_from_dict
from lcs.simulate.runner import replay
from lcs.simulate.scaling import rescale
from lcs.simulate.trace import load_trace

from sim_toys import EXAMPLES, HEADER, HOST, LEVELS


def model(**workload) -> CostModel:
    return CostModel(profile_from_dict({"levels": LEVELS}, "test"), HOST, Workload(**workload))


def write_trace(path: Path, rows) -> Path:
    path.write_text(HEADER + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


# Small hand-made traces where the battery binds (capacity in mWh, tiny on purpose): a drain, a charge
# in the middle, a budget that shuts out the large level, and a load that makes the large level late.
SMALL = {
    "drain": ([(0, 5, 0.1, 40), (60, 4, 0.1, 40), (120, 3, 0.1, 40), (180, 2, 0.1, 40), (240, 1.5, 0.1, 40),
               (300, 1, 0.1, 40)], 2.0, {}),
    "recharge": ([(0, 3, 0.1, 40), (60, 2, 0.1, 20), (120, 6, 0.1, 40), (180, 4, 0.1, 40), (240, 2, 0.1, 10),
                  (300, 1, 0.1, 40)], 1.5, {}),
    "late": ([(0, 8, 0.1, 40), (60, 6, 0.95, 40), (120, 5, 0.1, 40), (180, 3, 0.9, 40), (240, 2, 0.1, 40),
              (300, 1, 0.1, 40)], 2.0, {"deadline_ms": 0.5}),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_optimum_matches_brute_force_on_small_traces(tmp_path, name):
    rows, capacity, workload = SMALL[name]
    trace = load_trace(write_trace(tmp_path / f"{name}.csv", rows))
    m = model(**workload)
    best_brute, best_schedule = -1.0, None
    for schedule in itertools.product([None, 0, 1, 2], repeat=len(trace)):
        value = cmp.delivered(replay(trace, m, opt.Scheduled(list(schedule)), capacity_mwh=capacity).records)
        if value > best_brute:
            best_brute, best_schedule = value, schedule
    found = opt.solve(trace, m, capacity, grid_points=4096)
    achieved = cmp.delivered(replay(trace, m, opt.Scheduled(found.schedule), capacity_mwh=capacity).records)
    assert not found.exact  # the battery binds: the DP ran
    assert achieved <= best_brute + 1e-9 <= found.upper + 1e-6  # the bound holds
    assert achieved == pytest.approx(best_brute, rel=2e-3), (found.schedule, best_schedule)
    greedy = cmp.delivered(replay(trace, m, make_policy("greedy"), capacity_mwh=capacity).records)
    assert greedy < best_brute  # the cases are not ones greedy already solves


def test_optimum_is_exact_and_greedy_when_the_battery_never_binds(tmp_path):
    trace = load_trace(write_trace(tmp_path / "t.csv", [(i, 90, 0.1, [40, 20, 6, 3][i % 4]) for i in range(40)]))
    m = model()
    found = opt.solve(trace, m, 3700.0)
    assert found.exact and found.grid_points == 0
    assert found.schedule[:4] == [2, 1, 0, None]
    value = cmp.delivered(replay(trace, m, opt.Scheduled(found.schedule), capacity_mwh=3700.0).records)
    assert value == pytest.approx(found.upper)


def test_budget_rescaling_conserves_energy_share(tmp_path):
    trace = load_trace(EXAMPLES / "harvest_day.csv")
    m = model()
    dt = trace.durations()
    energy = sum(b * d for b, d in zip(trace.power_budget_mw, dt))
    for spec in ("0.25", "from=10000", "levels"):
        scaled, applied = rescale(trace, m, spec, None)
        factor = applied["budget"]["factor"]
        assert sum(b * d for b, d in zip(scaled.power_budget_mw, dt)) == pytest.approx(factor * energy, rel=1e-12)
    # from=P: the budget keeps its share of the device's dynamic power range
    scaled, _ = rescale(trace, m, "from=10000", None)
    board_range = HOST.active_mw - HOST.idle_mw
    assert sum(b * d for b, d in zip(scaled.power_budget_mw, dt)) / board_range == \
        pytest.approx(energy / 10000.0, rel=1e-12)
    scaled, applied = rescale(trace, m, "levels", None)
    assert max(scaled.power_budget_mw) == pytest.approx(max(o.power_mw for o in m.options(0.0)))


def test_load_rescaling_conserves_competing_cycles(tmp_path):
    trace = load_trace(write_trace(tmp_path / "t.csv", [(i, 90, 0.1 * (i % 5), 10) for i in range(10)]))
    scaled, applied = rescale(trace, model(), None, "from=4x1.5e9")
    work = [x * 4 * 1.5e9 for x in trace.cpu_load]
    assert [x * HOST.cores * HOST.clock_hz for x in scaled.cpu_load] == pytest.approx(work)
    assert applied["load"]["capped_rows"] == 0 and "2 x (1 - cpu_load)" in applied["load_model"]
    scaled, applied = rescale(trace, model(), None, "3")
    assert max(scaled.cpu_load) == 1.0 and applied["load"]["capped_rows"] == 2  # the two rows at 0.4


@pytest.mark.parametrize("option,value,message", [
    ("--budget-scale", "abc", "error: --budget-scale FACTOR, from=P or levels: expected a positive number, got 'abc'"),
    ("--budget-scale", "from=-3", "error: --budget-scale from=P"),
    ("--budget-scale", "0", "error: --budget-scale"),
    ("--load-scale", "from=4", "error: --load-scale from=4: expected from=CORESxHZ"),
    ("--load-scale", "from=4xfast", "error: --load-scale HZ: expected a positive number, got 'fast'"),
    ("--policy-option", "horizon_s=soon", "error: policy plan: option horizon_s='soon' is not a valid float"),
])
def test_malformed_option_is_one_line_exit_2(tmp_path, option, value, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(EXAMPLES / "load_bursts.csv"), "--profile",
                                      str(EXAMPLES / "host_profile.json"), "--policy", "plan", "--compare",
                                      option, value, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert not out.exists()


def test_compare_end_to_end_on_an_example_trace(tmp_path):
    out = tmp_path / "cmp"
    trace = EXAMPLES / "battery_discharge.csv"
    args = ["simulate", "--trace", str(trace), "--profile", str(EXAMPLES / "host_profile.json"), "--policy", "plan",
            "--policy-option", "until_s=36000", "--capacity-mwh", "300", "--compare", "--out", str(out)]
    result = CliRunner().invoke(cli, args + ["--json"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {row["name"]: row for row in data["rows"]}
    assert {"plan (chosen)", "greedy", "battery", "hysteresis", "plan", "optimum (offline)"} <= set(rows)
    assert sum(row["kind"] == "fixed" for row in data["rows"]) == 7
    best = rows["optimum (offline)"]["delivered"]
    assert rows["optimum (offline)"]["ratio_to_optimum"]["delivered"] == 1.0
    assert data["optimum"]["upper_bound"] >= best and data["optimum"]["relative_gap"] < 0.005
    for row in data["rows"]:  # nothing beats the optimum beyond its stated bound
        assert row["delivered"] <= data["optimum"]["upper_bound"] * (1 + 1e-9)
    chosen = rows["plan (chosen)"]["ratio_to_optimum"]["delivered"]
    assert chosen >= 0.98
    assert all(chosen > row["ratio_to_optimum"]["delivered"] for row in data["rows"]
               if row["kind"] in ("fixed", "policy") and row["name"] != "plan")
    summary = json.loads(result.stdout)
    assert summary["compare"]["rows"] == json.loads(json.dumps(data["rows"]))
    saving = summary["vs_densest"]
    assert saving["densest_level"] == "width 1.000" and saving["energy_mwh"]["saved"] > 0
    assert saving["answers"]["more"] > 0  # the densest level ran the battery dry; plan did not
    small = tmp_path / "small.csv"  # the printed table, on a short trace (the DP is not what is tested here)
    write_trace(small, [(i, 90 - i, 0.1, 14) for i in range(5)])
    table = CliRunner().invoke(cli, ["simulate", "--trace", str(small), "--profile", str(EXAMPLES / "host_profile.json"),
                                     "--compare", "--out", str(tmp_path / "table")])
    assert table.exit_code == 0, table.output
    assert "optimum (offline)" in table.stdout and "vs always width 1.000" in table.stdout


def test_plan_matches_greedy_when_the_battery_is_plentiful():
    trace = load_trace(EXAMPLES / "load_bursts.csv")
    m = model()
    plan = replay(trace, m, make_policy("plan"), capacity_mwh=3700.0).records
    greedy = replay(trace, m, make_policy("greedy"), capacity_mwh=3700.0).records
    assert cmp.delivered(plan) == pytest.approx(cmp.delivered(greedy))
    assert math.isclose(cmp.delivered(plan), opt.solve(trace, m, 3700.0).upper, rel_tol=1e-9)
