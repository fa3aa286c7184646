"""The recipe choices that make a line converge at a short budget (benchmarks/README.md has the evidence)."""

import dataclasses
import random

import pytest
import torch

from lcs.config import ModelConfig, RunConfig, SubspaceConfig, TrainConfig
from lcs.errors import ConfigError
from lcs.models import build_model
from lcs.subspace.model import SubspaceModel
from lcs.train import draw_alphas


def line_model(**kw):
    torch.manual_seed(0)
    return SubspaceModel(build_model(ModelConfig(in_channels=1, image_size=8)), SubspaceConfig(shape="line", **kw))


def grads_at(model, alpha=0.4):
    model.zero_grad()
    model.set_alpha(alpha, effective=1.0)
    model(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))).logsumexp(1).mean().backward()
    return [(p0.grad.clone(), p1.grad.clone()) for p0, p1 in model.line_pairs]


def test_half_and_half_is_plain_sgd_on_the_endpoints():
    model = line_model()
    before = grads_at(model)
    model.split_line_gradients(0.5, 0.5)
    for (g0, g1), (p0, p1) in zip(before, model.line_pairs):
        assert torch.equal(p0.grad, g0) and torch.equal(p1.grad, g1)


def test_centre_and_spread_move_at_their_own_rates():
    model = line_model()
    before = grads_at(model)
    centre, spread = 1.0, 0.25
    model.split_line_gradients(centre, spread)
    for (g0, g1), (p0, p1) in zip(before, model.line_pairs):
        # an SGD step -lr * grad moves c = (w0 + w1) / 2 by -lr * centre * dL/dc, d = (w1 - w0) / 2 by -lr * spread * dL/dd
        torch.testing.assert_close((p0.grad + p1.grad) / 2, centre * (g0 + g1))
        torch.testing.assert_close((p1.grad - p0.grad) / 2, spread * (g1 - g0))


def test_endpoint_init_copy_starts_a_short_line_independent_does_not():
    copy, independent = line_model(endpoint_init="copy"), line_model(endpoint_init="independent")
    for layer in copy.weight_layers():
        rel = float(((layer.weight1 - layer.weight).std() / layer.weight.std()).detach())
        assert 0.05 < rel < 0.2
    for layer in independent.weight_layers():
        assert float(((layer.weight1 - layer.weight).std() / layer.weight.std()).detach()) > 0.5
    assert float(copy.cos2().detach()) > 0.9 > float(independent.cos2().detach())


def test_log_spacing_samples_the_sparse_end_as_often_as_the_dense_end():
    def below_10_percent(spacing):
        cfg = RunConfig(model=ModelConfig(in_channels=1, image_size=8), train=TrainConfig(alpha_spacing=spacing))
        model = line_model()
        rng = random.Random(0)
        draws = [draw_alphas("biased-endpoints", rng, 0.9, cfg, model.cmap, model)[0].alpha for _ in range(4000)]
        between = [a for a in draws if a not in (0.025, 1.0)]
        return sum(a < 0.1 for a in between) / len(between)

    assert below_10_percent("log") == pytest.approx(0.375, abs=0.04)  # log(0.1/0.025) / log(1/0.025)
    assert below_10_percent("linear") == pytest.approx(0.077, abs=0.02)  # (0.1 - 0.025) / 0.975


def test_recipe_fields_are_validated():
    with pytest.raises(ConfigError):
        SubspaceConfig(endpoint_init="zeros")
    with pytest.raises(ConfigError):
        TrainConfig(alpha_spacing="cubic")


def test_split_folded_into_the_blend_backward_matches_the_separate_split():
    """train.py folds split_line_gradients into the fused blend's backward (one process, beta 0): the same
    gradients up to float rounding, and the forward (the blended weights) unchanged, bit for bit."""
    centre, spread = 1.0, 0.25
    model = line_model()
    expected = grads_at(model)
    model.split_line_gradients(centre, spread)
    expected = [(p0.grad.clone(), p1.grad.clone()) for p0, p1 in model.line_pairs]
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model.set_alpha(0.4, effective=1.0)
    out = model(x)
    model.folded_split = (centre, spread)
    assert torch.equal(model(x), out)
    for (g0, g1), (f0, f1) in zip(expected, grads_at(model)):
        torch.testing.assert_close(f0, g0, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(f1, g1, rtol=1e-5, atol=1e-7)
    model.set_alpha(0.4)
    next(model.layers()).state.alpha = 0.5  # a layer moved on its own: no fused blend, so the folded split cannot apply
    with pytest.raises(RuntimeError, match="fused blend"):
        model(x)


# -- issue 17: in-place distillation, sampling bias, weight averaging, seeds ---------------------------------------

def test_new_recipe_fields_round_trip_through_the_checkpoint_and_old_configs_load_with_the_old_recipe(tmp_path):
    from lcs import checkpoint
    from lcs.config import LEGACY_TRAIN

    train = TrainConfig(distill=0.5, endpoint_prob=0.25, low_end_share=0.75, weight_average=0.2)
    cfg = RunConfig(model=ModelConfig(in_channels=1, image_size=8), train=train)
    path = checkpoint.save(tmp_path / "m.safetensors", cfg, checkpoint.build(cfg))
    assert checkpoint.load(path).config == cfg
    old = cfg.to_dict()
    for name in LEGACY_TRAIN:
        del old["train"][name]  # a checkpoint written before these fields existed
    loaded = RunConfig.from_dict(old).train
    assert {name: getattr(loaded, name) for name in LEGACY_TRAIN} == LEGACY_TRAIN
    assert (LEGACY_TRAIN["distill"], LEGACY_TRAIN["weight_average"]) == (0.0, 0.0)
    with pytest.raises(ConfigError, match="distill"):
        TrainConfig(distill=1.5)
    with pytest.raises(ConfigError, match="weight-average"):
        TrainConfig(weight_average=1.0)


def test_distillation_loss_is_the_soft_cross_entropy_to_the_detached_densest_point_and_off_at_zero():
    import torch.nn.functional as F

    from lcs.train import draw_loss

    g = torch.Generator().manual_seed(0)
    logits, teacher_logits = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    teacher = F.softmax(teacher_logits, 1)
    ce = F.cross_entropy(logits, y)
    soft = -(teacher * F.log_softmax(logits, 1)).sum(1).mean()
    kl = F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean")
    entropy = -(teacher * teacher.log()).sum(1).mean()
    torch.testing.assert_close(soft, kl + entropy)  # the KL to the teacher, up to the teacher's entropy
    assert torch.equal(draw_loss(logits, y, TrainConfig(distill=0.0), teacher), ce)  # off: cross-entropy only
    torch.testing.assert_close(draw_loss(logits, y, TrainConfig(distill=1.0), teacher), soft)
    torch.testing.assert_close(draw_loss(logits, y, TrainConfig(distill=0.25), teacher), 0.75 * ce + 0.25 * soft)
    assert torch.equal(draw_loss(logits, y, TrainConfig(distill=1.0), None), ce)  # the densest point itself: labels


def test_distillation_puts_the_densest_point_first_and_adds_it_when_not_drawn():
    from lcs.train import Draw, with_teacher

    model = line_model()
    cfg = RunConfig(model=ModelConfig(in_channels=1, image_size=8), train=TrainConfig(distill=1.0))
    assert [d.alpha for d in with_teacher([Draw(0.3, effective=0.3)], model.cmap, 0.9, cfg)] == [1.0, 0.3]
    assert [d.alpha for d in with_teacher([Draw(0.025), Draw(1.0), Draw(0.5)], model.cmap, 0.9, cfg)] == [1.0, 0.025, 0.5]
    assert [d.alpha for d in with_teacher([Draw(1.0)], model.cmap, 0.9, cfg)] == [1.0]
    # mixed precision at the top alpha is not the densest point: the 8-bit teacher is added in front
    assert with_teacher([Draw(1.0, layer_bits=[3, 4])], model.cmap, 0.9, cfg)[0].layer_bits is None


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_training_passes_per_step_with_and_without_distillation(digits, monkeypatch, distill):
    from lcs.data import model_config_for
    from lcs.config import DataConfig
    from lcs.train import train

    calls = []
    original = SubspaceModel.forward
    monkeypatch.setattr(SubspaceModel, "forward", lambda self, x: calls.append(self.level.alpha) or original(self, x))
    cfg = RunConfig(model=model_config_for(digits.info), data=DataConfig("digits"),
                    train=TrainConfig(epochs=1, batch_size=256, distill=distill, sampler="uniform"))
    small = dataclasses.replace(digits, train=torch.utils.data.Subset(digits.train, range(768)))
    train(cfg, data=small)
    steps = 3  # 768 images, batch 256
    passes = calls[2:2 + steps * (2 if distill else 1)]  # after the two probes of _check_runs
    if distill:
        assert passes[0::2] == [1.0] * steps and all(a < 1.0 for a in passes[1::2])  # the densest point, then the draw
    else:
        assert all(a < 1.0 for a in passes)  # one pass per step, at the drawn level only


def test_weight_average_is_the_mean_of_the_steps_it_saw():
    from lcs.train import WeightAverage

    p = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([p])
    for v in (1.0, 2.0, 6.0):
        p.data.fill_(v)
        avg.add()
    avg.apply()
    torch.testing.assert_close(p.data, torch.full((3,), 3.0))


def test_accuracy_report_over_seeds_gives_mean_and_std_per_level():
    from benchmarks import accuracy as bench

    def result(name, seed, acc):
        return {"name": name, "family": "quantization", "seed": seed, "accuracy": acc, "train_seconds": 1.0,
                "ablation": {}, "grid": [], "rows": []}

    levels = bench.LEVELS["quantization"]
    results = []
    for seed, base in enumerate((90.0, 92.0, 94.0)):
        results += [result("LCS+L", seed, {lv: base for lv in levels}), result("LCS+P", seed, {lv: base - 1 for lv in levels})]
        results += [result(f"fixed {lv}", seed, {lv: 93.0}) for lv in levels]
    rep = bench.family_report("quantization", results, None)
    row = rep["levels"][0]
    assert (row["lcs_line"], row["lcs_line_std"], row["lcs_point"], row["fixed"], row["fixed_std"], row["seeds"]) == \
        (92.0, 2.0, 91.0, 93.0, 0.0, 3)
    assert row["line_minus_fixed"] == -1.0
    assert rep["targets"]["line_within_1pt_of_fixed_at_every_level"]
    assert not rep["targets"]["line_within_0.5pt_of_fixed_at_every_level"]
    # a run cut short: only what has been trained is reported
    partial = bench.family_report("quantization", results[:4], None)
    assert [r["level"] for r in partial["levels"]] == levels[:2] and partial["targets"]["levels_missing"] == levels[2:]


def test_distillation_is_off_by_default_and_the_train_command_sets_it(tmp_path):
    """One pass a step unless asked (issue 20: the CPU step must not get slower); `--distill` and `--compression-warmup`
    reach the config saved in the checkpoint, and a value out of range is one error line with nothing written."""
    from click.testing import CliRunner

    from lcs import checkpoint
    from lcs.cli import cli

    assert TrainConfig().distill == 0.0
    out = tmp_path / "d.safetensors"
    args = ["train", "--data", "synthetic:64", "--epochs", "1", "--width", "4", "--no-progress", "-o", str(out)]
    bad = CliRunner().invoke(cli, args + ["--distill", "1.5"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines() == ["error: distill must be in [0, 1], got 1.5"]
    assert not out.exists()
    bad = CliRunner().invoke(cli, args + ["--compression-warmup", "1.0"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines() == ["error: compression warm-up must be a fraction in [0, 1)"]
    assert not out.exists()
    ok = CliRunner().invoke(cli, args + ["--distill", "0.5", "--compression-warmup", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert (checkpoint.load(out).config.train.distill, checkpoint.load(out).config.train.compression_warmup) == (0.5, 0.5)


def test_accuracy_benchmark_refuses_a_compression_warmup_outside_0_1(capsys):
    from benchmarks import accuracy as bench

    with pytest.raises(SystemExit) as exc:
        bench.main(["--compression-warmup", "1.0", "--out", "/nonexistent/never-written"])
    assert exc.value.code == 2 and "compression warm-up must be a fraction in [0, 1)" in capsys.readouterr().err
    assert "compression_warmup" not in bench.TRAIN_OVERRIDES


def test_accuracy_benchmark_label_smoothing_reaches_every_run_and_is_checked(capsys, monkeypatch):
    """--label-smoothing goes to the LCS runs and the per-level models alike (a fair comparison); out of range: one
    error line, nothing set."""
    from benchmarks import accuracy as bench

    with pytest.raises(SystemExit) as exc:
        bench.main(["--label-smoothing", "1.5", "--out", "/nonexistent/never-written"])
    assert exc.value.code == 2 and "label-smoothing must be in [0, 1]" in capsys.readouterr().err
    assert "label_smoothing" not in bench.TRAIN_OVERRIDES
    monkeypatch.setitem(bench.TRAIN_OVERRIDES, "label_smoothing", 0.1)
    runs = bench.plan(2, quick=True, families=("unstructured",), ablations=())
    assert runs and {run.config.train.label_smoothing for run in runs} == {0.1}
    assert {run.config.train.method for run in runs} == {"lcs", "fixed"}
