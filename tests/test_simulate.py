"""lcs simulate: trace validation, the cost model's bookkeeping, policies, and the CLI end to end."""

from __future__ import annotations

import csv
import doctest
import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from lcs.cli import cli
from lcs.simulate import model as cost
from lcs.simulate import policies, simulate
from lcs.simulate.model import BoardPower, CostModel, Workload
from lcs.simulate.policies import Observation, make_policy
from lcs.simulate.profile import profile_from_dict
from lcs.simulate.runner import replay, summarize
from lcs.simulate.trace import TraceError, load_trace

from sim_toys import EXAMPLES, HEADER, HOST, LEVELS


def write_trace(path: Path, rows, header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


@pytest.fixture
def profile_file(tmp_path) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"target": {"name": "host"}, "levels": LEVELS}))
    return path


def cost_model(levels=LEVELS, board=HOST, **workload) -> CostModel:
    return CostModel(profile_from_dict({"levels": levels}, "test"), board, Workload(**workload))


def noisy_trace(tmp_path, n=300, seed=0, budget=(22.0, 6.0), load=0.1) -> Path:
    rng = random.Random(seed)
    rows = [(i, 90, load, round(max(0.0, rng.gauss(*budget)), 2)) for i in range(n)]
    return write_trace(tmp_path / "noisy.csv", rows)


# -- trace parsing -------------------------------------------------------------------------------

def test_trace_parses_comments_extras_and_defaults(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("# a comment\n\nt_s , cpu_load,battery_pct,weather\n0,0.5,90,sunny\n# mid comment\n"
                    "10,0.25,80,\n15,0,70,rain\n")
    trace = load_trace(path)
    assert trace.t_s == (0.0, 10.0, 15.0)
    assert trace.cpu_load == (0.5, 0.25, 0.0)
    assert trace.battery_pct == (90.0, 80.0, 70.0)
    assert all(math.isinf(b) for b in trace.power_budget_mw)  # the one optional column: unlimited
    assert trace.lines == (4, 6, 7)
    assert trace.durations() == [10.0, 5.0, 5.0]  # the last row repeats the gap before it
    assert trace.columns == ("t_s", "battery_pct", "cpu_load")


def test_trace_errors_are_lcs_errors_for_api_callers(tmp_path):
    path = write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 10), (1, 90, 1.5, 10)])
    with pytest.raises(TraceError, match=r"t.csv:3: column cpu_load = 1.5 is outside \[0, 1\] \(a fraction"):
        load_trace(path)


BAD_TRACES = [
    ("nan", HEADER + "\n0,90,0.1,10\n1,nan,0.1,10\n", ":3: column battery_pct is NaN"),
    ("blank", HEADER + "\n0,90,0.1,10\n1,90,,10\n", ":3: column cpu_load is blank"),
    ("short row", HEADER + "\n0,90,0.1,10\n1,90,0.1\n", ":3: column power_budget_mw is blank"),
    ("missing t_s", "battery_pct,cpu_load\n90,0.1\n80,0.1\n", ":1: missing required column t_s"),
    ("backwards", HEADER + "\n0,90,0.1,10\n5,90,0.1,10\n3,90,0.1,10\n", ":4: column t_s goes backwards (3 after 5)"),
    ("stuck", HEADER + "\n0,90,0.1,10\n0,90,0.1,10\n", ":3: column t_s does not advance"),
    ("load as percent", HEADER + "\n0,90,45,10\n1,90,0.1,10\n", ":2: column cpu_load = 45 is outside [0, 1]"),
    ("battery over", HEADER + "\n0,120,0.1,10\n1,90,0.1,10\n", ":2: column battery_pct = 120 is outside [0, 100]"),
    ("negative budget", HEADER + "\n0,90,0.1,10\n1,90,0.1,-3\n", ":3: column power_budget_mw = -3 is outside [0, 1e+12]"),
    ("inf", HEADER + "\n0,90,0.1,inf\n1,90,0.1,10\n", ":2: column power_budget_mw is infinite"),
    ("text", HEADER + "\n0,90,0.1,10\n1,ninety,0.1,10\n", ":3: column battery_pct: 'ninety' is not a number"),
    ("one row", HEADER + "\n0,90,0.1,10\n", "at least two data rows"),
    ("empty", "", "empty trace"),
    ("extra cells", HEADER + "\n0,90,0.1,10,7\n1,90,0.1,10\n", ":2: 5 cells but the header names 4 columns"),
]


@pytest.mark.parametrize("case,text,message", BAD_TRACES, ids=[c[0] for c in BAD_TRACES])
def test_bad_trace_is_one_line_error_and_writes_nothing(tmp_path, profile_file, case, text, message):
    trace = tmp_path / "bad.csv"
    trace.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--profile", str(profile_file),
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(trace) in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_missing_trace_file(tmp_path, profile_file):
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(tmp_path / "nope.csv"),
                                      "--profile", str(profile_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.csv'}: no such trace file"


@pytest.mark.parametrize("profile,extra,message", [
    ({"target": {"name": "host"}, "levels": [{"index": 0, "alpha": 1.0, "latency_ms": 1.0}]}, [],
     "levels[0]: no accuracy"),
    ({"target": {"name": "host"}, "levels": [{"index": 0, "alpha": 1.0, "accuracy": 0.9}]}, [],
     "levels[0]: needs latency_ms or cycles"),
    ({"target": {"name": "host"}, "levels": [{"index": 0, "alpha": 1.0, "accuracy": 90, "latency_ms": 1}]}, [],
     "levels[0]: accuracy = 90 is outside [0, 1]"),
    ({"target": {"name": "host"}, "levels": LEVELS}, ["--board", "rasp4"], "was measured on host, not on --board rasp4"),
    ({"levels": LEVELS}, [], "names no board; pass --board"),
    ({"levels": LEVELS}, ["--board", "no-such-board"], "unknown target 'no-such-board'"),
    ({"target": {"name": "host"}, "levels": LEVELS}, ["--policy", "nope"], "unknown policy 'nope'"),
    ({"target": {"name": "host"}, "levels": LEVELS}, ["--policy", "hysteresis", "--policy-option", "hold=0"],
     "hold must be at least 1"),
    ({"target": {"name": "host"}, "levels": LEVELS}, ["--policy", "battery", "--policy-option", "thresholds=5,50"],
     "battery thresholds must be distinct percentages from high to low"),
    ({"target": {"name": "host"}, "levels": LEVELS}, ["--policy", "greedy", "--policy-option", "x=1"],
     "policy greedy has no option x"),
    ({"target": {"name": "host"}, "levels": LEVELS}, ["--deadline-ms", "0"], "deadline-ms must be a positive number"),
])
def test_bad_levels_board_or_policy(tmp_path, profile, extra, message):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(profile))
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 10), (1, 90, 0.1, 10)])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--profile", str(prof),
                                      "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not out.exists()


def test_profile_that_is_not_json(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text("{levels: [")
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 10), (1, 90, 0.1, 10)])
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--profile", str(prof)])
    assert result.exit_code == 2 and "not valid JSON (line 1" in result.stderr


# -- the cost model and the battery, against hand computations -----------------------------------

def test_latency_scales_with_free_cores():
    m = cost_model()
    assert [o.latency_ms for o in m.options(0.0)] == pytest.approx([0.05, 0.15, 0.30])
    assert m.options(0.5)[2].latency_ms == pytest.approx(0.30)  # one of two cores still free
    assert m.options(0.75)[2].latency_ms == pytest.approx(0.60)  # half a core free
    assert m.options(1.0)[2].latency_ms == pytest.approx(0.30 / cost.MIN_CPU_SHARE)
    single = BoardPower(name="mcu", cores=1, clock_hz=100e6, idle_mw=10.0, active_mw=110.0)
    mcu = cost_model([{"index": 0, "alpha": 1.0, "accuracy": 0.9, "cycles": 2_000_000}], board=single)
    assert mcu.options(0.0)[0].latency_ms == pytest.approx(20.0)  # 2e6 cycles at 100 MHz
    assert mcu.options(0.6)[0].latency_ms == pytest.approx(50.0)  # 40 % of the only core
    # energy per inference: (110 - 10) mW * 20 ms = 2 mJ, whatever the load
    assert mcu.options(0.6)[0].energy_per_inference_mj == pytest.approx(2.0)
    # a 50 ms answer cannot keep up with the 100 ms period? it can: 10 Hz, 20 mW
    assert mcu.options(0.6)[0].power_mw == pytest.approx(20.0)
    assert mcu.options(0.95)[0].latency_ms == pytest.approx(400.0)  # backlogged: 2.5 Hz
    assert mcu.options(0.95)[0].power_mw == pytest.approx(5.0)
    assert not mcu.options(0.95)[0].meets_deadline


def test_energy_and_battery_bookkeeping_by_hand(tmp_path):
    # One level of 1 ms on the host: 10000 mW per core * 1 ms = 10 mJ per answer; 10 Hz -> 100 mW.
    m = cost_model([{"index": 0, "alpha": 1.0, "accuracy": 0.8, "latency_ms": 1.0}])
    trace = load_trace(write_trace(tmp_path / "t.csv", [(0, 50, 0.0, 1000), (60, 49, 0.0, 1000),
                                                         (120, 49, 0.75, 1000)]))
    result = replay(trace, m, make_policy("greedy"), capacity_mwh=100.0)
    r0, r1, r2 = result.records
    # step 0: 100 mW * 60 s = 6000 mJ = 1.6667 mWh = 1.6667 % of 100 mWh; the trace itself drops 1 %
    assert r0.energy_mj == pytest.approx(6000.0) and r0.answers == pytest.approx(600.0)
    assert r0.battery_end_pct == pytest.approx(50 - 1 - 6000 / 3600)
    assert r1.battery_pct == pytest.approx(r0.battery_end_pct)
    assert r1.battery_end_pct == pytest.approx(50 - 1 - 2 * 6000 / 3600)
    # step 2: load 0.75 on 2 cores doubles latency (2 ms, still under the 100 ms period): same energy
    assert r2.latency_ms == pytest.approx(2.0) and r2.energy_mj == pytest.approx(6000.0)
    assert r2.battery_end_pct == pytest.approx(50 - 1 - 3 * 6000 / 3600)
    s = summarize(result)
    assert s["energy_mj"] == pytest.approx(18000.0) and s["energy_mwh"] == pytest.approx(5.0)
    assert s["mean_power_mw"] == pytest.approx(100.0) and s["answers"] == pytest.approx(1800.0)
    assert s["mean_expected_accuracy"] == pytest.approx(0.8)
    assert s["battery_left_pct"] == pytest.approx(50 - 1 - 5.0)


def test_empty_battery_serves_part_of_a_step_then_waits_for_charge(tmp_path):
    m = cost_model([{"index": 0, "alpha": 1.0, "accuracy": 0.8, "latency_ms": 1.0}])
    # capacity 1 mWh: a 60 s step needs 6000 mJ = 1.667 mWh = 166.7 %; only 10 % is there
    trace = load_trace(write_trace(tmp_path / "t.csv", [(0, 10, 0, 1000), (60, 10, 0, 1000), (120, 15, 0, 1000),
                                                         (180, 15, 0, 1000)]))
    records = replay(trace, m, make_policy("greedy"), capacity_mwh=1.0).records
    assert records[0].state == "run"
    assert records[0].served_fraction == pytest.approx(10 / (6000 / 3600 / 1.0 * 100))
    assert records[0].energy_mj == pytest.approx(0.10 * 3600.0)  # exactly the 10 % of 1 mWh that was there
    assert records[0].battery_end_pct == 0.0
    # step 1: empty, but the trace charges +5 % during it; step 2 runs on that charge
    assert records[1].state == "empty" and records[1].energy_mj == 0.0
    assert records[1].battery_end_pct == pytest.approx(5.0)
    assert records[2].state == "run" and records[2].energy_mj == pytest.approx(0.05 * 3600.0)


# -- policies ------------------------------------------------------------------------------------

def obs_for(m: CostModel, budget: float, load: float = 0.0, battery: float = 80.0, current=None) -> Observation:
    return Observation(step=0, t_s=0.0, dt_s=1.0, battery_pct=battery, cpu_load=load, power_budget_mw=budget,
                       deadline_ms=m.workload.deadline_ms, current=current, options=m.options(load))


def test_greedy_picks_most_accurate_within_budget_and_deadline():
    m, greedy = cost_model(), make_policy("greedy")
    assert greedy.choose(obs_for(m, 100.0)).level.index == 2
    assert greedy.choose(obs_for(m, 29.9)).level.index == 1
    assert greedy.choose(obs_for(m, 15.0)).level.index == 1  # exactly at budget fits
    assert greedy.choose(obs_for(m, 14.0)).level.index == 0
    assert greedy.choose(obs_for(m, 4.0)) is None  # nothing fits: idle
    tight = cost_model(deadline_ms=0.5, period_ms=100.0)
    # load 0.9 on 2 cores: 20 % of a core -> latencies 0.25, 0.75, 1.5 ms; only level 0 meets 0.5 ms
    assert greedy.choose(obs_for(tight, 100.0, load=0.9)).level.index == 0
    # no level meets 0.1 ms: the fastest affordable one answers late rather than none
    late = cost_model(deadline_ms=0.01, period_ms=100.0)
    assert greedy.choose(obs_for(late, 100.0)).level.index == 0


def test_greedy_never_exceeds_the_budget_on_a_random_trace(tmp_path):
    m = cost_model()
    trace = load_trace(noisy_trace(tmp_path, budget=(15.0, 12.0)))
    records = replay(trace, m, make_policy("greedy"), capacity_mwh=3700.0).records
    ran = [r for r in records if r.state == "run"]
    assert ran and any(r.state == "idle" for r in records) and len({r.level for r in ran}) == 3
    for r in records:
        affordable = [o for o in m.options(r.cpu_load) if o.power_mw <= r.power_budget_mw]
        if r.state == "run":
            assert r.power_mw <= r.power_budget_mw and not r.over_budget
            assert r.accuracy == max(o.level.accuracy for o in affordable)
        else:
            assert not affordable


def test_deadline_misses_are_counted_when_no_level_is_on_time(tmp_path):
    m = cost_model(deadline_ms=0.2)
    # load 0.95 on 2 cores: 10 % of a core -> 0.5, 1.5, 3 ms; nothing meets 0.2 ms, greedy answers late at level 0
    trace = load_trace(write_trace(tmp_path / "t.csv", [(0, 90, 0.0, 100), (1, 90, 0.95, 100), (2, 90, 0.95, 100),
                                                         (3, 90, 0.0, 100)]))
    records = replay(trace, m, make_policy("greedy"), capacity_mwh=3700.0).records
    assert [r.level for r in records] == [1, 0, 0, 1]  # unloaded, 0.15 ms is on time; loaded, the fastest
    assert [r.deadline_miss for r in records] == [False, True, True, False]
    assert summarize(replay(trace, m, make_policy("greedy"), capacity_mwh=3700.0))["deadline_misses"] == 2


def test_battery_policy_caps_the_level_by_thresholds():
    m, battery = cost_model(), make_policy("battery")  # thresholds 50, 20, 5
    assert battery.choose(obs_for(m, 100.0, battery=80)).level.index == 2
    assert battery.choose(obs_for(m, 100.0, battery=35)).level.index == 1
    assert battery.choose(obs_for(m, 10.0, battery=35)).level.index == 0  # the budget still applies
    assert battery.choose(obs_for(m, 100.0, battery=10)).level.index == 0
    assert battery.choose(obs_for(m, 100.0, battery=4)) is None
    two = make_policy("battery", {"thresholds": "30"})
    assert two.choose(obs_for(m, 100.0, battery=31)).level.index == 2
    assert two.choose(obs_for(m, 100.0, battery=29)) is None


def test_hysteresis_switches_less_than_greedy_and_keeps_the_budget(tmp_path):
    m = cost_model()
    trace = load_trace(noisy_trace(tmp_path))
    greedy = summarize(replay(trace, m, make_policy("greedy"), capacity_mwh=3700.0))
    held = replay(trace, m, make_policy("hysteresis"), capacity_mwh=3700.0)
    assert greedy["switches"] > 50
    assert summarize(held)["switches"] < greedy["switches"] / 2
    assert all(r.power_mw <= r.power_budget_mw for r in held.records)
    assert summarize(held)["over_budget_steps"] == 0


def test_hysteresis_steps_up_only_after_hold_steps():
    m = cost_model()
    policy = make_policy("hysteresis", {"hold": "3", "margin": "0.1"})
    current = policy.choose(obs_for(m, 20.0))
    assert current.level.index == 1
    picks = []
    for _ in range(4):  # 40 mW: level 2 (30 mW) fits with 10 % headroom
        current = policy.choose(obs_for(m, 40.0, current=current))
        picks.append(current.level.index)
    assert picks == [1, 1, 2, 2]
    assert policy.choose(obs_for(m, 10.0, current=current)).level.index == 0  # down at once


def test_user_policy_from_the_docstring_and_module_class(tmp_path, monkeypatch):
    failures, tried = doctest.testmod(policies)
    assert tried > 0 and failures == 0
    (tmp_path / "my_policies.py").write_text(
        "from lcs.simulate.policies import Policy\n"
        "class Cheapest(Policy):\n"
        "    name = 'cheapest'\n"
        "    def choose(self, obs):\n"
        "        return min(obs.options, key=lambda o: o.power_mw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 100), (1, 90, 0.1, 100)])
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"target": {"name": "host"}, "levels": LEVELS}))
    result = simulate(trace, profile=prof, policy="my_policies:Cheapest")
    assert [r.level for r in result.replay.records] == [0, 0]


def test_a_policy_returning_a_foreign_option_is_an_error(tmp_path):
    class Rogue(policies.Policy):
        name = "rogue"

        def choose(self, obs):
            return cost_model().options(0.5)[0]

    trace = load_trace(write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 100), (1, 90, 0.1, 100)]))
    with pytest.raises(Exception, match="must return one of obs.options"):
        replay(trace, cost_model(), Rogue(), capacity_mwh=100.0)


# -- end to end ----------------------------------------------------------------------------------

def read_timeline(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("name", ["battery_discharge", "load_bursts", "harvest_day"])
def test_example_traces_run_end_to_end(tmp_path, name):
    trace = EXAMPLES / f"{name}.csv"
    profile = EXAMPLES / "host_profile.json"
    out = tmp_path / name
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--profile", str(profile),
                                      "--policy", "hysteresis", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "timeline.csv", "timeline.png"]
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_timeline(out / "timeline.csv")
    assert len(rows) == len(load_trace(trace)) == summary["steps"]
    written = json.loads((out / "summary.json").read_text())
    for key in ("mean_expected_accuracy", "energy_mwh", "deadline_misses", "switches", "battery_left_pct"):
        assert written[key] == summary[key]
    assert sum(float(r["energy_mj"]) for r in rows) == pytest.approx(summary["energy_mj"], rel=1e-4)
    assert summary["run_steps"] > 0 and 0 < summary["mean_expected_accuracy"] <= 1


def test_table_output_and_default_out_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(EXAMPLES / "load_bursts.csv"),
                                      "--profile", str(EXAMPLES / "host_profile.json"), "--deadline-ms", "2",
                                      "--period-ms", "100"])
    assert result.exit_code == 0, result.output
    assert "mean expected accuracy" in result.stdout and "level switches" in result.stdout
    assert (tmp_path / "sim-load_bursts" / "timeline.png").is_file()


def test_out_path_that_is_a_file_is_refused(tmp_path, profile_file):
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 10), (1, 90, 0.1, 10)])
    (tmp_path / "taken").write_text("x")
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--profile", str(profile_file),
                                      "--out", str(tmp_path / "taken")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert (tmp_path / "taken").read_text() == "x"


# -- levels from an artifact, accuracy from lcs eval ----------------------------------------------

def write_firmware_artifact(path: Path, target: str = "host-sim") -> Path:
    """An artifact shaped like an MCU build's: cycles per level, no accuracy, no latency."""
    from lcs import artifact

    levels = [{"index": i, "alpha": a, "label": f"{100 * (1 - a):.1f}% sparse", "accuracy": None, "latency_ms": None,
               "cycles": c, "members": {"firmware": "firmware/fw.bin"}}
              for i, (a, c) in enumerate([(0.05, 400_000), (0.25, 700_000), (1.0, 1_500_000)])]
    manifest = artifact.new_manifest(kind="firmware", target={"name": target}, strategy="firmware", levels=levels,
                                     modules={}, input={"shape": [1, 4], "dtype": "float32"},
                                     output={"shape": [1, 2], "dtype": "float32"},
                                     firmware={"binary": "firmware/fw.bin", "weights": "firmware/weights.bin"})
    return artifact.write_artifact(path, manifest, {"firmware/fw.bin": b"\x7fELF not really",
                                                    "firmware/weights.bin": b"\0" * 8})


def eval_results(path: Path) -> Path:
    rows = [{"model": "LCS+L (unstructured)", "alpha": a, "accuracy": acc} for a, acc in
            [(0.05, 0.91), (0.25, 0.95), (0.5, 0.96), (1.0, 0.97)]]
    rows.append({"model": "fixed baseline", "alpha": 0.05, "accuracy": 0.5})
    path.write_text(json.dumps(rows))
    return path


def test_levels_from_an_artifact_with_accuracy_from_eval(tmp_path):
    lcsa = write_firmware_artifact(tmp_path / "m.lcsa")
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.0, 1e6), (1, 90, 0.0, 1e6)])
    result = simulate(trace, artifact=lcsa, accuracy=eval_results(tmp_path / "results.json"), period_ms=1000.0)
    assert [lv.accuracy for lv in result.profile.levels] == [0.91, 0.95, 0.97]
    assert result.summary["board"] == "host-sim"  # taken from the artifact's target
    top = result.replay.records[0]
    assert top.level == 2
    # host-sim: clock 1e9 (cycles are ns), one core -> 1.5e6 cycles = 1.5 ms
    board = BoardPower.from_board(__import__("targets").load("host-sim"))
    assert top.latency_ms == pytest.approx(1.5)
    assert top.power_mw == pytest.approx(board.core_mw * 1.5 / 1000.0)  # 1 answer/s


@pytest.mark.parametrize("extra,message", [
    ([], "levels[0]: no accuracy (pass --accuracy results.json"),
    (["--board", "host"], "was built for target 'host-sim', not 'host'"),
])
def test_artifact_errors_are_one_line(tmp_path, extra, message):
    lcsa = write_firmware_artifact(tmp_path / "m.lcsa")
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.0, 10), (1, 90, 0.0, 10)])
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--artifact", str(lcsa),
                                      "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


def test_corrupt_artifact_is_refused(tmp_path):
    lcsa = write_firmware_artifact(tmp_path / "m.lcsa")
    lcsa.write_bytes(lcsa.read_bytes()[:700])
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.0, 10), (1, 90, 0.0, 10)])
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--artifact", str(lcsa)])
    assert result.exit_code == 2 and "truncated" in result.stderr


# -- the hardware-in-the-loop executor's bookkeeping (a scripted client; real firmware below) -----

class ScriptedDevice:
    """Answers like lcs.device.Device: 4 levels, 3 inputs; cycles = 1000 * (level + 1)."""

    def __init__(self):
        self.level, self.calls = 0, []

    def hello(self):
        from types import SimpleNamespace
        return SimpleNamespace(levels=4, input_len=3)

    def set_level(self, index=None, alpha=None):
        self.calls.append(("set_level", index))
        self.level = index
        return index, 50

    def infer(self, values):
        self.calls.append(("infer", tuple(values)))
        return [0.0, 1.0, 0.5], 1000 * (self.level + 1)


def test_device_executor_switches_only_on_change_and_records_device_timing(tmp_path):
    from lcs.simulate.hardware import DeviceExecutor, HardwareError

    m = cost_model()
    trace = load_trace(noisy_trace(tmp_path, n=60))
    dev = ScriptedDevice()
    executor = DeviceExecutor(dev, clock_hz=1e6, level_indices=[0, 1, 2], source="device:test",
                              inputs=[[1, 2, 3], [4, 5, 6]], reference={1: [[0, 0, 1], [0, 1, 0]]})
    result = replay(trace, m, make_policy("greedy"), capacity_mwh=3700.0, executor=executor)
    ran = [r for r in result.records if r.state == "run"]
    set_calls = [c for c in dev.calls if c[0] == "set_level"]
    assert len(set_calls) == summarize(result)["switches"] + 1  # the first set-level loads, the rest switch
    assert [c for c in dev.calls if c[0] == "infer"][:2] == [("infer", (1.0, 2.0, 3.0)), ("infer", (4.0, 5.0, 6.0))]
    for r in ran:
        assert r.device_latency_ms == pytest.approx((r.level + 1) * 1000 / 1e6 * 1000)  # cycles at 1 MHz
        assert r.output == "1"
    report = executor.report()
    assert report["device_inferences"] == len(ran)
    level1 = [i for i, r in enumerate(ran) if r.level == 1]
    assert report["reference_disagreements"] == sum(1 for i in level1 if i % 2 == 0)  # sample 0 expects class 2
    with pytest.raises(HardwareError, match="offers 4 levels"):
        DeviceExecutor(ScriptedDevice(), clock_hz=1e6, level_indices=[0, 7], source="device:test")


# -- hardware in the loop with the real firmware on host-sim ---------------------------------------

@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.parametrize("how", ["sim", "device"])
def test_hardware_in_the_loop_on_host_sim(hostsim_artifact, tmp_path, how):
    from lcs.artifact import open_artifact

    lcsa, binary = hostsim_artifact
    levels = open_artifact(lcsa).levels
    # host-sim cycles are wall-clock ns, so which level is cheapest varies from build to build. The accuracies
    # given here are synthetic and rise with cost: the test checks the loop's mechanics, not the model.
    by_cost = sorted(levels, key=lambda lv: lv.cycles)
    assert by_cost[0].cycles < by_cost[1].cycles, levels
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"model": "lcs", "alpha": lv.alpha, "accuracy": 0.7 + 0.1 * rank}
                                   for rank, lv in enumerate(by_cost)]))
    board = BoardPower.from_board(__import__("targets").load("host-sim"))
    power = {lv.index: board.core_mw * lv.cycles / 1e6 / 100.0 for lv in levels}  # ms / 100 ms period
    best, cheap = by_cost[-1].index, by_cost[0].index
    # Levels of one family can cost nearly the same (dense kernels): put the low budget halfway between the two
    # cheapest, so exactly one level fits it whatever the measured spread.
    hi, lo = power[best] * 1.01, (power[cheap] + power[by_cost[1].index]) / 2
    budgets = [hi, hi, lo, lo, hi, 0.0, hi, lo, hi, hi]
    trace = write_trace(tmp_path / "t.csv", [(i, 90, 0.0, b) for i, b in enumerate(budgets)])
    out = tmp_path / "out"
    args = ["simulate", "--trace", str(trace), "--artifact", str(lcsa), "--accuracy", str(results),
            "--out", str(out), "--json"]
    if how == "sim":
        result = CliRunner().invoke(cli, args + ["--sim", "host-sim"])
    else:
        from lcs.transport.launch import start_host_sim

        with start_host_sim(binary) as running:
            result = CliRunner().invoke(cli, args + ["--device", running.url])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"].startswith("device:")
    rows = read_timeline(out / "timeline.csv")
    b, c = str(best), str(cheap)
    assert [r["level"] for r in rows] == [b, b, c, c, b, "", b, c, b, b]
    assert summary["switches"] == 4 and summary["device_switches"] == 5  # the first set-level loads
    assert summary["device_inferences"] == summary["run_steps"] == 9
    assert summary["reference_disagreements"] == 0  # the device predicts what torch predicts at each level
    for r in rows:
        if r["state"] == "run":
            assert float(r["device_latency_ms"]) > 0 and r["output"] != ""
        else:
            assert r["device_latency_ms"] == "" and r["output"] == ""


def test_sim_needs_an_artifact(tmp_path, profile_file):
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 10), (1, 90, 0.1, 10)])
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--profile", str(profile_file),
                                      "--sim", "host-sim"])
    assert result.exit_code == 2 and "--sim starts the firmware inside an artifact" in result.stderr


def test_device_that_does_not_exist(tmp_path, profile_file):
    trace = write_trace(tmp_path / "t.csv", [(0, 90, 0.1, 10), (1, 90, 0.1, 10)])
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(trace), "--profile", str(profile_file),
                                      "--device", str(tmp_path / "ttyNOPE"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "cannot open" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
