"""The chunked replay (lcs/simulate/batch.py) against the per-step one: the same rows, bytes and sums.

Each case replays a few thousand rows both ways and compares the timeline text and the summary exactly; the
traces are built to reach every branch: the battery running dry and recharging (empty steps, part-served
steps, the clamp at 100 %), idle steps (no level fits the budget), deadline misses (full load), over-budget
steps (fixed), level switches, irregular step lengths, and blocks small enough that chunk edges fall
everywhere, with comments, blank lines and quoted cells in the middle (the line-by-line fallback).
"""

from __future__ import annotations

import json
import re
import random

import pytest

from lcs.simulate import batch, output, simulate
from lcs.simulate import trace as trace_module
from lcs.simulate.model import CostModel, Workload
from lcs.simulate.policies import make_policy
from lcs.simulate.profile import profile_from_dict
from lcs.simulate.runner import Summary, iter_replay
from lcs.simulate.scaling import make_scaling
from lcs.simulate.trace import TraceError, load_trace, open_trace

from sim_toys import HEADER, HOST, LEVELS

CAPACITY_MWH = 0.5  # small: the toy levels (5, 15, 30 mW) empty it within minutes


def rows(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.choice([1.0, 1.0, 0.5, 2.25, 0.1])
        phase = (i // 400) % 3  # discharge, dead flat at 0, recharge to 100
        battery = [max(0.0, 60 - (i % 400) * 0.2), 0.0, min(100.0, (i % 400) * 0.5)][phase]
        load = rng.choice([0.0, 0.1, 0.5, 0.97, 1.0, round(rng.random(), 3)])
        budget = rng.choice([0.0, 3.0, 8.0, 16.0, 31.0, 1e6, round(rng.uniform(0, 40), 2)])
        out.append(f"{t:.6g},{battery:.3f},{load},{budget}")
    return out


def write(path, lines, header=HEADER):
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(trace_module, "CHUNK_CHARS", 3000)  # ~150 rows a block: many chunk edges


@pytest.fixture
def model():
    # a 0.9 ms deadline: every level misses it at full load (latency x 20), the larger ones earlier
    return CostModel(profile_from_dict({"levels": LEVELS}, "test"), HOST, Workload(deadline_ms=0.9))


def both_ways(path, model, name, options=None, budget=None, load=None):
    """(timeline text, summary JSON) of the per-step replay and of the chunked one."""
    results = []
    for chunked in (False, True):
        stream = open_trace(path)
        scaling = make_scaling(stream, model, budget, load)
        policy, summary = make_policy(name, options), Summary()
        if chunked:
            rule = batch.batch_rule(policy, model)
            assert rule is not None, name
            text = []
            for chunk in batch.replay_chunks(scaling.chunks(stream.step_chunks()), model, rule,
                                             capacity_mwh=CAPACITY_MWH):
                summary.add_chunk(chunk)
                text.append(output.timeline_text(chunk))
            text = "".join(text)
        else:
            records = list(iter_replay(scaling.steps(stream.steps()), model, policy, capacity_mwh=CAPACITY_MWH))
            for r in records:
                summary.add(r)
            text = output.timeline_csv(records, with_device=False).split("\n", 1)[1]
        results.append((text, json.dumps(summary.result())))
    return results


@pytest.mark.parametrize("name,options", [
    ("greedy", None), ("battery", None), ("battery", {"thresholds": "60,30"}), ("battery", {"thresholds": "40"}),
    ("hysteresis", None), ("hysteresis", {"hold": "1", "margin": "0"}), ("fixed", None), ("fixed", {"level": "0"}),
    ("fixed", {"level": "2"}),
])
def test_chunked_replay_is_the_per_step_replay(tmp_path, model, small_blocks, name, options):
    path = write(tmp_path / "t.csv", rows())
    (ref_text, ref_summary), (text, summary) = both_ways(path, model, name, options)
    assert text == ref_text
    assert summary == ref_summary
    cells = [line.split(",") for line in text.splitlines()]
    assert {c[8] for c in cells} == ({"run", "empty"} if name == "fixed" else {"run", "idle", "empty"})
    # steps the battery could power only in part (battery idles below its last threshold: it never runs dry)
    assert any(0 < float(c[19]) < 1 for c in cells) or name == "battery"
    result = json.loads(summary)
    assert result["deadline_misses"] > 0
    assert result["switches"] > 0 or name == "fixed"
    assert result["over_budget_steps"] > 0 or name != "fixed"


def test_chunked_replay_with_scaling_fallback_blocks_and_no_budget_column(tmp_path, model, small_blocks):
    lines = rows(2000, seed=1)
    lines[500:500] = ["# a comment in the middle", "", '  ']
    cells = lines[900].split(",")
    lines[900] = ",".join([cells[0], f'"{cells[1]}"', *cells[2:]])  # a quoted cell: the csv module's path
    path = write(tmp_path / "t.csv", lines)
    for name in ("greedy", "hysteresis"):
        (ref_text, ref_summary), (text, summary) = both_ways(path, model, name, budget="levels", load="1.5")
        assert (text, summary) == (ref_text, ref_summary)
    # the factors from the stream read as arrays, as from the whole trace read row by row
    assert make_scaling(open_trace(path), model, "levels", "1.5").applied == \
        make_scaling(load_trace(path), model, "levels", "1.5").applied
    nobudget = write(tmp_path / "n.csv", [",".join(line.split(",")[:3]) for line in rows(1000, seed=2)],
                     header="t_s,battery_pct,cpu_load")
    (ref_text, ref_summary), (text, summary) = both_ways(nobudget, model, "battery")
    assert (text, summary) == (ref_text, ref_summary)


def test_simulate_writes_the_same_files_either_way(tmp_path, small_blocks, monkeypatch):
    """The whole run (timeline, summary with vs_densest, the plot's decimated sample, --compare) through `simulate`,
    both ways. The plots are stood in for by the exact data they would draw (matplotlib would cost seconds)."""
    from lcs.simulate import compare

    monkeypatch.setattr(output, "plot_png", lambda records, summary, levels, title: repr((records, summary)).encode())
    monkeypatch.setattr(compare, "plot_png", lambda data: repr(data["rows"]).encode())
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"target": {"name": "host"}, "levels": LEVELS}))
    path = write(tmp_path / "t.csv", rows(3000, seed=3))
    # --compare on a trace whose battery never binds (the offline optimum then needs no dynamic programming)
    calm = write(tmp_path / "calm.csv", [f"{t},90,{line.split(',')[2]},{line.split(',')[3]}"
                                         for t, line in enumerate(rows(500, seed=4))])
    for name, trace, capacity in (("battery", path, CAPACITY_MWH), ("hysteresis", calm, 3700.0)):
        files = {}
        for per_step in (True, False):
            out = tmp_path / f"{name}-{per_step}"
            simulate(trace, profile=profile, policy=name, capacity_mwh=capacity, out_dir=out, per_step=per_step,
                     budget_scale="2", compare=trace == calm)
            files[per_step] = {f.name: f.read_bytes() for f in out.iterdir()}
            if "compare.json" in files[per_step]:  # the optimum's own run time is the one number that differs
                data = json.loads(files[per_step]["compare.json"])
                assert data["optimum"].pop("seconds") >= 0
                files[per_step]["compare.json"] = data
        assert files[True] == files[False], name
        assert len(files[True]) == (5 if trace == calm else 3)  # --compare: compare.json and compare.png
    # plan has no batch rule: it takes the per-step replay
    assert batch.batch_rule(make_policy("plan"), CostModel(profile_from_dict({"levels": LEVELS}, "t"), HOST,
                                                           Workload())) is None
    result = simulate(path, profile=profile, capacity_mwh=CAPACITY_MWH)  # no --out: the records, every row
    reference = simulate(path, profile=profile, capacity_mwh=CAPACITY_MWH, per_step=True)
    assert result.replay.records == reference.replay.records and result.summary == reference.summary


@pytest.mark.parametrize("cells,message", [
    (["0,90,0.1,10", "1,90,nan,10"], ":3: column cpu_load is NaN"),
    (["0,90,0.1,10", "1,90,1.5,10"], ":3: column cpu_load = 1.5 is outside [0, 1]"),
    (["0,90,0.1,10", "0,90,0.1,10"], ":3: column t_s does not advance"),
    (["0,90,0.1,10", "1,90,0.1"], ":3: column power_budget_mw is blank"),
    (["0,90,0.1,10", "1,90,0.1,10,7"], ":3: 5 cells but the header names 4 columns"),
    (["0,90,0.1,10", "1,90,x,10"], ":3: column cpu_load: 'x' is not a number"),
    (["0,90,0.1,10"], "a trace needs at least two data rows (found 1)"),
])
def test_chunked_reader_gives_the_same_errors(tmp_path, cells, message):
    path = write(tmp_path / "t.csv", cells)
    for read in (lambda s: list(s.steps()), lambda s: list(s.step_chunks())):
        with pytest.raises(TraceError, match=re.escape(message)):
            read(open_trace(path))


def test_chunked_reader_values_are_float_of_each_cell(tmp_path, small_blocks):
    """numpy's reader against float() on odd spellings: signs, exponents, spaces, -0, 17 digits, a BOM."""
    odd = ["0,-0,0,1e1", "1e0, 90 ,+0.5,1E+2", "2.,.5,0.1000000000000000055511151231257827,3.141592653589793238",
           "3,99.99999999999999,1,0", "4,1_0,0.2,5"]  # 1_0: float() takes it, numpy does not: the line path
    path = tmp_path / "t.csv"
    path.write_text("\ufeff" + HEADER + "\n" + "\n".join(odd + [f"{t},50,0.3,7" for t in range(5, 400)]) + "\n",
                    encoding="utf-8")
    stream = open_trace(path)
    expected = list(stream.rows())
    got = [tuple(map(float, row)) for block in stream.chunks() for row in zip(*block)]
    assert [r[1:] for r in expected] == got
    assert [repr(v) for v in got[0]] == [repr(v) for v in expected[0][1:]]  # -0.0 stays -0.0


def test_a_subclass_that_changes_choose_takes_the_per_step_replay(model):
    from dataclasses import dataclass

    from lcs.simulate.policies import Greedy

    @dataclass
    class Cheapest(Greedy):  # inherits Greedy.batch, which would decide as greedy does
        def choose(self, obs):
            return min(obs.options, key=lambda o: o.power_mw)

    assert batch.batch_rule(Cheapest(), model) is None
    assert batch.batch_rule(make_policy("greedy"), model) is not None
