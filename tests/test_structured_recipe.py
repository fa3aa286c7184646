"""Issue 17, structured family: the two-pass sampler and drawing widths from the evaluation grid."""

import dataclasses
import random

import pytest
from torch.utils.data import Subset

from lcs import checkpoint
from lcs.config import LEGACY_TRAIN, ConfigError, DataConfig, RunConfig, SubspaceConfig, TrainConfig
from lcs.data import model_config_for
from lcs.train import draw_alphas, with_teacher


def structured(digits, **train_kw):
    cfg = RunConfig(model=model_config_for(digits.info, norm="group"), data=DataConfig("digits"),
                    subspace=SubspaceConfig(shape="line", family="structured"), train=TrainConfig(**train_kw))
    return cfg, checkpoint.build(cfg)


def steps(cfg, model, n=600):
    rng = random.Random(0)
    return [draw_alphas(cfg.train.sampler, rng, 0.5, cfg, model.cmap, model) for _ in range(n)]


def test_max_and_random_trains_the_widest_point_every_step_and_the_narrow_end_half_the_steps(digits):
    cfg, model = structured(digits, sampler="max-and-random", width_draw="grid")
    grid = model.cmap.eval_alphas
    drawn = steps(cfg, model)
    assert all(len(d) == 2 and d[0].alpha == 1.0 for d in drawn)  # 2 passes, the widest first
    others = [d[1].alpha for d in drawn]
    assert 0.4 < others.count(0.0) / len(others) < 0.6  # endpoint_prob 0.5
    counts = [others.count(a) for a in grid[1:-1]]  # the rest: every grid width between the ends, none other
    assert sum(counts) + others.count(0.0) == len(others) and min(counts) > 0.5 * (len(others) / 2) / len(counts)
    # distilling from the widest point adds no pass: it is drawn already, and first
    assert all(with_teacher(d, model.cmap, 0.5, cfg) == d for d in drawn[:20])


def test_min_and_random_trains_the_narrowest_point_every_step(digits):
    cfg, model = structured(digits, sampler="min-and-random", width_draw="grid", width_grid=4, endpoint_prob=0.25)
    drawn = steps(cfg, model)
    assert all(len(d) == 2 and d[0].alpha == 0.0 for d in drawn)
    others = [d[1].alpha for d in drawn]
    assert 0.15 < others.count(1.0) / len(others) < 0.35
    assert sorted({round(a, 6) for a in others}) == [round(1 / 3, 6), round(2 / 3, 6), 1.0]


def test_uniform_width_draw_is_continuous_and_half_the_second_passes_at_the_narrow_end(digits):
    cfg, model = structured(digits, sampler="max-and-random")
    others = [d[1].alpha for d in steps(cfg, model)]
    assert 0.4 < others.count(0.0) / len(others) < 0.6
    assert len({a for a in others if a != 0.0}) > 200  # continuous: (almost) every draw a new width


def test_sandwich_draws_between_the_ends_from_the_grid(digits):
    cfg, model = structured(digits, sampler="sandwich", samples_per_step=4, width_draw="grid")
    inner = set(model.cmap.eval_alphas[1:-1])
    for d in steps(cfg, model, 100):
        assert [d[0].alpha, d[1].alpha] == [0.0, 1.0] and {x.alpha for x in d[2:]} <= inner


def test_width_draw_round_trips_and_old_checkpoints_read_back_uniform(tmp_path, digits):
    cfg, model = structured(digits, width_draw="grid", sampler="max-and-random")
    path = checkpoint.save(tmp_path / "m.safetensors", cfg, model)
    assert checkpoint.load(path).config.train.width_draw == "grid"
    old = cfg.to_dict()
    del old["train"]["width_draw"]
    assert RunConfig.from_dict(old).train.width_draw == LEGACY_TRAIN["width_draw"] == "uniform"
    with pytest.raises(ConfigError, match="width draw"):
        TrainConfig(width_draw="log")


def test_accuracy_benchmark_structured_recipe_reaches_the_lcs_runs_only(monkeypatch):
    from benchmarks import accuracy as bench
    from lcs.config import ModelConfig

    monkeypatch.setattr(bench, "model_config", lambda: ModelConfig(in_channels=1, image_size=28))
    recipe = bench.parse_recipe("sampler=max-and-random, width_draw=grid,distill=0.5")
    assert recipe == {"sampler": "max-and-random", "width_draw": "grid", "distill": 0.5}
    monkeypatch.setattr(bench, "STRUCTURED_RECIPE", recipe)
    runs = {run.name: run.config.train for run in bench.plan(1, True, families=("structured", "unstructured"),
                                                               ablations=())
            if run.family == "structured"}
    assert runs["LCS+L"].sampler == runs["LCS+P"].sampler == "max-and-random" and runs["LCS+L"].distill == 0.5
    fixed = [t for name, t in runs.items() if name.startswith("fixed")]
    assert fixed and all(t.method == "fixed" and t.sampler == "" for t in fixed)
    assert bench.base_config("unstructured", "line", 1).train.sampler == ""  # other families keep their recipe
    for bad in ("foo=1", "distill=x", "sampler"):
        with pytest.raises(ConfigError):
            bench.parse_recipe(bad)


def test_width_grid_of_n_evenly_spaced_widths(digits):
    cfg, model = structured(digits, sampler="sandwich", samples_per_step=4, width_draw="grid", width_grid=4)
    inner = {d.alpha for step in steps(cfg, model, 100) for d in step[2:]}
    assert sorted(inner) == pytest.approx([1 / 3, 2 / 3])
    assert [model.cmap.level(a).width for a in sorted(inner)] == pytest.approx([0.5, 0.75])
    for bad in (1, -1, True):
        with pytest.raises(ConfigError, match="width grid"):
            TrainConfig(width_grid=bad)


def test_split_batch_shares_the_batch_among_the_draws(digits):
    from lcs.train import Draw, batch_shares

    draws = [Draw(0.0), Draw(1.0), Draw(0.5)]
    assert batch_shares(draws, 1.0, 32, "none") == [None] * 3
    assert batch_shares(draws, 1.0, 32, "narrow") == [slice(0, 16), None, slice(16, 32)]  # the widest: all of it
    assert batch_shares(draws + [Draw(0.25)], 1.0, 32, "all") == [slice(0, 8), slice(8, 16), slice(16, 24),
                                                                   slice(24, 32)]
    assert batch_shares(draws, 1.0, 1, "all") == [None] * 3  # fewer samples than draws: no split
    # low_end_batch: the narrowest draw gets its fraction, the others equal shares of the rest
    assert batch_shares(draws, 1.0, 32, "narrow", 0.0, 0.625) == [slice(0, 20), None, slice(20, 32)]
    assert batch_shares(draws, 1.0, 32, "all", 0.0, 0.5) == [slice(0, 16), slice(16, 24), slice(24, 32)]
    with pytest.raises(ConfigError, match="low-end-batch"):
        TrainConfig(low_end_batch=1.5)
    with pytest.raises(ConfigError, match="split batch"):
        TrainConfig(split_batch=True)
    # a short real run: every draw trains on its share (loss finite, the checkpoint keeps the choice)
    from lcs.train import train

    cfg, _ = structured(digits, epochs=1, batch_size=64, sampler="sandwich", samples_per_step=4, width_draw="grid",
                        width_grid=4, split_batch="all")
    small = dataclasses.replace(digits, train=Subset(digits.train, range(128)), test=Subset(digits.test, range(64)))
    result = train(cfg, data=small)
    assert result.config.train.split_batch == "all" and all(row["loss"] == row["loss"] for row in result.history)


def test_low_end_weight_scales_the_narrowest_draws_loss_only(digits, monkeypatch):
    import torch

    import lcs.train as lt

    seen = []
    real = lt.draw_loss

    def spy(logits, y, t, teacher):
        loss = real(logits, y, t, teacher)
        seen.append(loss.detach())
        return loss

    monkeypatch.setattr(lt, "draw_loss", spy)
    cfg, _ = structured(digits, epochs=1, batch_size=64, sampler="sandwich", samples_per_step=3, width_draw="grid",
                        width_grid=4, low_end_weight=3.0, lr=1e-9)
    small = dataclasses.replace(digits, train=Subset(digits.train, range(64)), test=Subset(digits.test, range(8)))
    result = lt.train(cfg, data=small)
    lo, hi, mid = seen[:3]  # one step: [narrowest, widest, between]
    torch.testing.assert_close(torch.tensor(result.history[0]["loss"]), (3.0 * lo + hi + mid) / 3, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="low-end-weight"):
        TrainConfig(low_end_weight=0.0)


def test_a_sandwich_of_two_is_refused_it_never_trains_the_widths_between(digits):
    from lcs.train import train

    cfg, _ = structured(digits, sampler="sandwich", samples_per_step=2)
    with pytest.raises(ConfigError, match="at least 3 samples per step"):
        train(cfg, data=digits)


def test_lcs_train_gives_the_structured_family_its_recipe_and_nothing_else():
    """lcs train's structured LCS runs get STRUCTURED_LCS_TRAIN (3 passes, grid widths, split batch); the US-Nets
    baseline, fixed models and the other families keep the TrainConfig defaults."""
    from lcs import commands
    from lcs.config import STRUCTURED_LCS_TRAIN

    def train_of(**kw):
        return commands.train_config(data_source="digits", epochs=1, **kw)[0].train

    lcs_run = train_of(family="structured", shape="line")
    assert {k: getattr(lcs_run, k) for k in STRUCTURED_LCS_TRAIN} == STRUCTURED_LCS_TRAIN
    defaults = TrainConfig()
    for other in (train_of(method="us"), train_of(family="structured", method="fixed", fixed_level="width=0.5"),
                  train_of(family="unstructured", shape="line"), train_of(family="quantization", shape="point")):
        assert {k: getattr(other, k) for k in STRUCTURED_LCS_TRAIN} == \
            {k: getattr(defaults, k) for k in STRUCTURED_LCS_TRAIN}
