"""The verbs of the CLI as plain functions that scripts can call."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lcs.config import DataConfig, RunConfig, SubspaceConfig, TrainConfig, family_train_defaults
from lcs.errors import ConfigError
from lcs.subspace.levels import level_alphas, make_map, parse_level


def train_config(*, data_source: str = "mnist5k", model_name: str = "small-cnn", family: str = "unstructured",
                 shape: str = "line", method: str = "lcs", fixed_level: str | None = None, norm: str | None = None,
                 width: int = 16, epochs: int = TrainConfig.epochs, batch_size: int = TrainConfig.batch_size,
                 lr: float | None = None, weight_decay: float = TrainConfig.weight_decay,
                 warmup_epochs: float = TrainConfig.warmup_epochs, beta: float = TrainConfig.beta, sampler: str = "",
                 compress_stem: bool = False, compress_head: bool = False, seed: int = 0, augment: bool = False,
                 distill: float = TrainConfig.distill, compression_warmup: float = TrainConfig.compression_warmup):
    """Build the RunConfig for a training run from CLI-level choices; returns (config, data)."""
    from lcs.data import load_data, model_config_for
    from lcs.models import MODEL_NAMES

    if model_name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if method == "us":
        family, shape = "structured", "point"
    if method == "fixed":
        shape = "point"
        if fixed_level is None:
            raise ConfigError("a fixed baseline needs --alpha (e.g. --alpha keep=0.1, width=0.5 or bits=4)")
    elif fixed_level is not None:
        raise ConfigError("--alpha only applies to --method fixed")
    cmap = make_map(family)
    fixed_alpha = parse_level(fixed_level, cmap) if fixed_level is not None else 1.0
    if norm is None:
        norm = "batch" if method == "us" else "instance" if family == "structured" else "group"
    if lr is None:
        lr = TrainConfig.lr  # the reference's 0.025 for quantization trains slower here (94.7 vs 96.2 % at 8 bit, 10 epochs)
    data_cfg = DataConfig(source=data_source, seed=seed, augment=augment)
    data = load_data(data_cfg)
    config = RunConfig(
        model=model_config_for(data.info, name=model_name, width=width, norm=norm),
        data=data_cfg,
        subspace=SubspaceConfig(shape=shape, family=family, compress_stem=compress_stem, compress_head=compress_head),
        train=TrainConfig(method=method, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          warmup_epochs=warmup_epochs, beta=beta, sampler=sampler, fixed_alpha=fixed_alpha, seed=seed,
                          distill=distill, compression_warmup=compression_warmup,
                          **family_train_defaults(family, method)),
    )
    return config, data


def train(config: RunConfig, data=None, output: str | Path | None = None, *, threads: int = 0,
          progress: bool = True, accel=None, compare_steps: int = 20) -> dict:
    """Train and write the checkpoint; returns a summary. `accel` (lcs.accel.Accel): device and precision;
    `compare_steps`: steps of the plain network timed afterwards, for the step-cost comparison (0: none)."""
    import torch

    from lcs import train as training

    if output is not None:
        from lcs.atomic import check_writable

        check_writable(output, "-o")  # before the training, not after it
    if threads:
        torch.set_num_threads(threads)
    if not progress:
        result = training.train(config, data=data, out=output, accel=accel, compare_steps=compare_steps)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task("train", total=None, epoch=1, loss=float("nan"))

            def on_step(step: int, total: int, info: dict) -> None:
                bar.update(task, completed=step, total=total, epoch=info["epoch"], loss=info["loss"])

            result = training.train(config, data=data, out=output, on_step=on_step, accel=accel,
                                    compare_steps=compare_steps)
    return {
        "rank": training.Dist.from_env().rank,  # under torchrun only rank 0 writes and reports
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "epochs": config.train.epochs,
        "final_loss": result.history[-1]["loss"],
        **result.timing(),  # device, precision, world_size, images_per_second, step_ms, plain_step_ms, step_ratio
        "history": result.history,
        "eval": result.eval,
        "config": config.to_dict(),
    }


def timing_line(summary: dict) -> str:
    """Throughput and the LCS step beside a plain step of the same network, for `lcs train`."""
    where = summary["device"] + (f", {summary['world_size']} processes ({summary['backend']})"
                                 if summary["world_size"] > 1 else "")
    line = f"{summary['images_per_second']:.0f} images/s on {where}, {summary['precision']}; step {summary['step_ms']:.2f} ms"
    if summary.get("plain_step_ms"):
        line += (f", a plain step of the same network and batch {summary['plain_step_ms']:.2f} ms "
                 f"(LCS step {summary['step_ratio']:.2f}x)")
    return line


def evaluate(checkpoint_path: str | Path, *, data_source: str | None = None, levels: str | None = None,
             baselines: Sequence[str | Path] = (), out_dir: str | Path | None = None, device: str = "auto"):
    """Accuracy per level for a checkpoint and its baselines, on `device` (auto, cpu, cuda, cuda:N);
    optionally writes JSON, CSV and a plot."""
    from lcs import atomic, checkpoint
    from lcs.accel import resolve_device
    from lcs.data import check_fits, load_data
    from lcs.evaluate import baseline_levels, evaluate_levels, label_of, plot, rows_to_csv, rows_to_json

    where = resolve_device(device)
    if out_dir is not None:
        atomic.check_writable(Path(out_dir) / "results.json", "--out")
    main = checkpoint.load(checkpoint_path)
    data_cfg = DataConfig(source=data_source, seed=main.config.data.seed) if data_source else main.config.data
    data = load_data(data_cfg)
    check_fits(data.info, main.config.model)
    alphas = level_alphas(levels, main.model.cmap)
    rows = evaluate_levels(main.model.to(where), data.test, baseline_levels(main, alphas),
                           label_of(main, checkpoint_path), device=where)
    for path in baselines:
        base = checkpoint.load(path)
        if base.config.subspace.family != main.config.subspace.family:
            raise ConfigError(f"baseline {path} compresses by {base.config.subspace.family}, "
                              f"not {main.config.subspace.family}")
        check_fits(data.info, base.config.model)
        rows += evaluate_levels(base.model.to(where), data.test, baseline_levels(base, alphas), label_of(base, path),
                                device=where)
    if out_dir is not None:
        out = Path(out_dir)
        atomic.write_text(out / "results.json", rows_to_json(rows))
        atomic.write_text(out / "results.csv", rows_to_csv(rows))
        plot(rows, main.config.subspace.family, out / "accuracy.png")
    return rows


def print_rows(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="accuracy per compression level")
    for col in ("model", "alpha", "level", "accuracy", "zero weights"):
        table.add_column(col, justify="left" if col in ("model", "level") else "right")
    for r in rows:
        table.add_row(r.model, f"{r.alpha:.3f}", r.level, f"{100 * r.accuracy:.2f}%", f"{100 * r.zero_fraction:.1f}%")
    Console().print(table)
