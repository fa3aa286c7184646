"""Issue 17, structured family: the two-pass sampler and drawing widths from the evaluation grid."""

import random

import pytest

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


def test_max_and_random_trains_the_widest_point_every_step_and_every_grid_width_as_often(digits):
    cfg, model = structured(digits, sampler="max-and-random", width_draw="grid")
    grid = model.cmap.eval_alphas
    drawn = steps(cfg, model)
    assert all(len(d) == 2 and d[0].alpha == 1.0 for d in drawn)  # 2 passes, the widest first
    others = [d[1].alpha for d in drawn]
    counts = [others.count(a) for a in grid[:-1]]  # every grid width but the widest, none other
    assert sum(counts) == len(others) and min(counts) > 0.6 * len(others) / len(counts)
    # distilling from the widest point adds no pass: it is drawn already, and first
    assert all(with_teacher(d, model.cmap, 0.5, cfg) == d for d in drawn[:20])


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
