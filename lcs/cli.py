"""The `lcs` command: a thin click layer. Each verb parses options and calls one plain function;
an `LcsError` becomes one line on stderr and a non-zero exit code."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

import click

from lcs import __version__
from lcs.config import TrainConfig  # the training recipe's defaults (no torch)
from lcs.errors import LcsError

FAMILY_CHOICE = click.Choice(["unstructured", "structured", "quantization"])


def fail_cleanly(fn):
    """Map expected failures to one line and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lcs import interrupts

        try:
            with interrupts.signals_interrupt():  # SIGTERM cleans up like SIGINT
                return fn(*args, **kwargs)
        except LcsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception:
            if interrupts.received() is None:
                raise
            # a library turned the interrupt into its own error (TVM: RuntimeError): it is still the interrupt
            exit_interrupted(interrupts.received())
        except KeyboardInterrupt:
            exit_interrupted(interrupts.received() or 2)

    return wrapper


def exit_interrupted(signum: int) -> None:
    """One line and exit 128 + signum. The clean-up has run by now; a second SIGINT or SIGTERM from here on is ignored:
    Python resets handlers to the default action while it shuts down, and a late one (seen under load) killed the
    process with -2 instead of 130."""
    import signal

    click.echo(f"interrupted ({signal_name(signum)})", err=True)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    sys.exit(128 + signum)


@contextlib.contextmanager
def stdout_for_json_only(enabled: bool):
    """While a --json result is made, whatever libraries print to stdout (MetaSchedule's console logger, C++ writing
    to fd 1) goes to stderr, so stdout carries the JSON and nothing else."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        real = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a test runner's stream: no fd to move
        real = False
    saved = os.dup(1) if real else None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def board_options(what: str):
    """--device / --sim / --rpc / --tracker / --key, declared once (lcs.transport.board.open_board takes exactly one;
    lcs deploy needs one, lcs simulate at most one). `what` starts every help line."""
    options = [
        click.option("--device", "device_url", default=None, metavar="URL",
                     help=what + "a board running lcs firmware (the artifact's): any pyserial port or URL (/dev/ttyACM0, "
                                 "socket://h:p, a pty)"),
        click.option("--sim", "sim_board", default=None, metavar="BOARD",
                     help=what + "a simulated board: the artifact's firmware started on host-sim (a pty) or QEMU"),
        click.option("--rpc", default=None, metavar="HOST:PORT",
                     help=what + "a Linux board's TVM RPC server (python -m tvm.exec.rpc_server): the artifact's CPU "
                                 "build runs there"),
        click.option("--tracker", default=None, metavar="HOST:PORT",
                     help=what + "a free board of --key from a TVM RPC tracker"),
        click.option("--key", default=None, help="device key of the board at the tracker"),
    ]

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


class LcsGroup(click.Group):
    """click's group, with usage errors (bad choice, missing option) shown as one line like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=LcsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lcs")
def cli() -> None:
    """Train one network as a compressible subspace and run it at any compression level on device."""


# -- train ----------------------------------------------------------------------------------------

@cli.command("train")
@click.option("--data", "data_source", default="mnist5k", show_default=True,
              help="digits | mnist5k | cifar10:PATH | folder:PATH (or a directory)")
@click.option("--model", "model_name", default="small-cnn", show_default=True,
              help="small-cnn | cpreresnet20 | resnet8 | ds-cnn | mobilenet-v1-0.25 | resnet18 | mobilenet-v2")
@click.option("--family", type=FAMILY_CHOICE, default="unstructured", show_default=True, help="compression family")
@click.option("--shape", type=click.Choice(["line", "point"]), default="line", show_default=True,
              help="line = LCS+L (two endpoints), point = LCS+P (one weight set)")
@click.option("--method", type=click.Choice(["lcs", "fixed", "us"]), default="lcs", show_default=True,
              help="lcs: the subspace; fixed: a baseline trained for one level (--alpha); us: slimmable baseline")
@click.option("--alpha", "fixed_level", default=None, help="level of a fixed baseline: alpha or e.g. keep=0.1, width=0.5, bits=4")
@click.option("--norm", type=click.Choice(["group", "instance", "layer", "batch"]), default=None,
              help="norm layers [default: group; instance for structured; batch for us]")
@click.option("--width", type=int, default=16, show_default=True, help="base channels of the small CNN")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True, help="base learning rate")
@click.option("--weight-decay", type=float, default=TrainConfig.weight_decay, show_default=True)
@click.option("--warmup-epochs", type=float, default=TrainConfig.warmup_epochs, show_default=True)
@click.option("--beta", type=float, default=TrainConfig.beta, show_default=True, help="weight of the cos^2(w0, w1) regulariser")
@click.option("--sampler", default="", help="override the family's alpha sampler")
@click.option("--distill", type=float, default=TrainConfig.distill, show_default=True,
              help="in-place distillation: drawn points learn this share from the densest point's outputs "
                   "(0.5: more accurate levels, two passes a step where the sampler draws one)")
@click.option("--compression-warmup", type=float, default=TrainConfig.compression_warmup, show_default=True,
              help="fraction of training over which compression is phased in (0.5 with --distill 0.5: the most "
                   "accurate sparse levels measured, benchmarks/README.md)")
@click.option("--compress-stem/--no-compress-stem", default=False, show_default=True)
@click.option("--compress-head/--no-compress-head", default=False, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--augment/--no-augment", default=False, show_default=True, help="random crop and flip (image sets)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="checkpoint to write (.safetensors)")
@click.option("--threads", type=int, default=0, help="torch threads (0: torch's default)")
@click.option("--device", "device", default="auto", show_default=True,
              help="auto | cpu | cuda | cuda:N (auto: CUDA when present; under torchrun, cuda is each rank's GPU)")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="autocast precision of convolutions and matrix products (masks, quantization, norms stay fp32)")
@click.option("--workers", type=int, default=None,
              help="data loader processes for image folders [default: up to 8 per GPU, none on CPU]")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the training summary as JSON")
@fail_cleanly
def train_cmd(data_source, model_name, family, shape, method, fixed_level, norm, width, epochs, batch_size, lr,
              weight_decay, warmup_epochs, beta, sampler, distill, compression_warmup, compress_stem, compress_head, seed,
              augment, output, threads, device, precision, workers, progress, as_json):
    """Train a compressible subspace (or a baseline) and write a checkpoint."""
    from lcs import commands
    from lcs.accel import Accel, resolve_device

    accel = Accel(device=device, precision=precision, workers=workers)
    resolve_device(accel.device)  # a missing GPU fails before the data is read
    config, data = commands.train_config(
        data_source=data_source, model_name=model_name, family=family, shape=shape, method=method,
        fixed_level=fixed_level, norm=norm, width=width, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, beta=beta, sampler=sampler,
        compress_stem=compress_stem, compress_head=compress_head, seed=seed, augment=augment, distill=distill,
        compression_warmup=compression_warmup)
    summary = commands.train(config, data, output, threads=threads, progress=progress and not as_json, accel=accel)
    if summary["rank"] != 0:
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {summary['checkpoint']}  ({summary['epochs']} epochs, final loss {summary['final_loss']:.4f}, "
                   f"{summary['step_ms']:.1f} ms/step)")
        click.echo(commands.timing_line(summary))


# -- eval -----------------------------------------------------------------------------------------

@cli.command("eval")
@click.argument("checkpoint_path", metavar="CKPT", type=click.Path(path_type=Path))
@click.option("--data", "data_source", default=None, help="data to test on [default: the checkpoint's]")
@click.option("--levels", default=None, help="comma-separated alphas or keep=/sparsity=/width=/bits= values "
                                              "[default: the family's evaluation grid]")
@click.option("--baseline", "baselines", multiple=True, type=click.Path(path_type=Path),
              help="checkpoint of a baseline to overlay (repeatable)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write results.json, results.csv and accuracy.png here")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@click.option("--csv", "as_csv", is_flag=True, help="print the rows as CSV")
@click.option("--device", "device", default="auto", show_default=True,
              help="auto | cpu | cuda | cuda:N (auto: CUDA when present)")
@fail_cleanly
def eval_cmd(checkpoint_path, data_source, levels, baselines, out_dir, as_json, as_csv, device):
    """Accuracy of a subspace at every compression level, beside baselines."""
    from lcs import commands, evaluate

    rows = commands.evaluate(checkpoint_path, data_source=data_source, levels=levels, baselines=baselines,
                             out_dir=out_dir, device=device)
    if as_json:
        click.echo(evaluate.rows_to_json(rows))
    elif as_csv:
        click.echo(evaluate.rows_to_csv(rows), nl=False)
    else:
        commands.print_rows(rows)
        if out_dir is not None:
            click.echo(f"wrote {out_dir}/results.json, results.csv, accuracy.png")


# -- simulate (issue 6) ---------------------------------------------------------------------------

def _policy_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--policy-option")
        options[key.strip()] = value.strip()
    return options


@cli.command("simulate")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True,
              help="trace CSV: t_s, battery_pct, cpu_load, power_budget_mw (see lcs/simulate/trace.py)")
@click.option("--artifact", "artifact_path", type=click.Path(path_type=Path), default=None,
              help="artifact whose manifest gives the levels (accuracy, latency or cycles)")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="JSON file with the same 'levels' list, for use without an artifact")
@click.option("--accuracy", "accuracy_path", type=click.Path(path_type=Path), default=None,
              help="lcs eval results (results.json): accuracy per level, matched by alpha (wins over the manifest's)")
@click.option("--board", default=None, help="board in targets/ [default: the one the levels were measured on]")
@click.option("--policy", default="greedy", show_default=True,
              help="greedy | battery | hysteresis | plan | fixed, or module:Class for your own")
@click.option("--policy-option", "policy_option", multiple=True, metavar="NAME=VALUE",
              help="set a policy parameter, e.g. hold=5 or thresholds=60,30,10 (repeatable)")
@click.option("--deadline-ms", type=float, default=None, help="latency deadline per answer [default: the period]")
@click.option("--period-ms", type=float, default=None,
              help="one inference request every period [default: 100 ms]")
@click.option("--capacity-mwh", type=float, default=3700.0, show_default=True,
              help="battery capacity (the default is 1000 mAh at 3.7 V)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder for timeline.csv, summary.json, timeline.png [default: sim-<trace name>]")
@board_options("hardware in the loop: each running step really sets the level and runs one inference on ")
@click.option("--budget-scale", default=None, metavar="FACTOR|from=P|levels",
              help="rescale the trace's power budget to this board: a factor, from=P (the recording device's dynamic "
                   "power range in mW) or levels (highest budget = costliest level); see lcs/simulate/scaling.py")
@click.option("--load-scale", default=None, metavar="FACTOR|from=CORESxHZ",
              help="rescale the trace's CPU load: a factor, or from=CORESxHZ (the recording device's cores and clock)")
@click.option("--compare", "compare", is_flag=True,
              help="also run every built-in policy, every fixed level and the offline optimum on the same trace: "
                   "table, compare.json, compare.png (see lcs/simulate/compare.py)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON instead of a table")
@fail_cleanly
def simulate_cmd(trace_path, artifact_path, profile_path, accuracy_path, board, policy, policy_option, deadline_ms,
                 period_ms, capacity_mwh, out_dir, device_url, sim_board, rpc, tracker, key, budget_scale, load_scale,
                 compare, as_json):
    """Replay a power/load trace: which level a policy picks per step, and what that costs."""
    from lcs import simulate
    from lcs.simulate.output import print_summary, summary_json

    result = simulate.simulate(
        trace_path, artifact=artifact_path, profile=profile_path, board=board, policy=policy,
        policy_options=_policy_options(policy_option), deadline_ms=deadline_ms, period_ms=period_ms,
        capacity_mwh=capacity_mwh, out_dir=out_dir if out_dir is not None else Path(f"sim-{trace_path.stem}"),
        device=device_url, sim=sim_board, rpc=rpc, tracker=tracker, key=key, accuracy=accuracy_path,
        budget_scale=budget_scale, load_scale=load_scale, compare=compare)
    if as_json:
        click.echo(summary_json({**result.summary, "compare": result.comparison} if compare else result.summary),
                   nl=False)
    else:
        print_summary(result.summary)
        if result.comparison is not None:
            from lcs.simulate.compare import print_comparison

            print_comparison(result.comparison)
        click.echo("wrote " + ", ".join(str(p) for p in result.files.values()))


# -- end simulate ---------------------------------------------------------------------------------


# -- build / info (issue 4) -----------------------------------------------------------------------

def _compiler():
    """The build function the compiler package registers under the `lcs.compilers` entry point (pyproject.toml)."""
    from importlib.metadata import entry_points

    found = entry_points(group="lcs.compilers", name="tvm")
    if not found:
        raise LcsError("lcs build needs the compiler (tvm_build), which is not installed here: install lcs with "
                       "pip (`pip install '.[tvm]'` in a checkout) so that it registers itself")
    return next(iter(found)).load()


@cli.command("build")
@click.argument("checkpoint_path", metavar="CKPT", type=click.Path(path_type=Path))
@click.option("--target", "target", required=True, help="board name (see targets/), e.g. host, rasp4")
@click.option("--levels", default=None, help="comma-separated alphas or keep=/sparsity=/width=/bits= values "
                                              "[default: the family's evaluation grid]")
@click.option("--strategy", type=click.Choice(["per-level", "weights-as-input", "alpha-input"]), default="per-level",
              show_default=True, help="one module per level, one module with weights as inputs, or alpha as input")
@click.option("--tune", type=int, default=0, show_default=True, help="MetaSchedule trials per module (0: untuned)")
@click.option("--threads", type=int, default=None,
              help="CPU threads the model may use: kernels planned and tuned for it; each level is timed at 1, 2, 4 "
                   ".. of them and runs on the fewest within 3 % of its fastest [default: every core]")
@click.option("--rpc", default=None, metavar="HOST:PORT", help="a TVM RPC server on the board: verify and time there")
@click.option("--tracker", default=None, metavar="HOST:PORT", help="a TVM RPC tracker: tune, verify and time on a board")
@click.option("--key", default=None, help="device key of the board at the tracker")
@click.option("--int8/--fp32", "int8", default=None,
              help="every level on integer kernels (int8 weights and activations, calibrated on the checkpoint's "
                   "training data), or on fp32 kernels [default: MCU and host-sim boards int8 where the model "
                   "converts; linux boards (host, rasp4) fp32 TVM, --int8 builds C integer kernels: AVX-512 VNNI, "
                   "AVX2 or NEON by the board's CPU, on up to --threads threads]")
@click.option("--int8-store", "int8_store", type=click.Choice(["auto", "derived", "ready"]), default=None,
              help="the int8 weight store: derived keeps an LCS+P model's int8 codes once and builds a level in RAM "
                   "at each switch; ready stores every level as the kernels read it; auto: derived where the model "
                   "is LCS+P unstructured or quantization, its level buffer fits the board's RAM and a switch stays "
                   "within 0.13 of an inference [default: auto]")
@click.option("--accuracy", "eval_results", type=click.Path(path_type=Path), default=None,
              help="results.json from `lcs eval --out DIR`: accuracy per level for the manifest")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="artifact to write (.lcsa)")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path), default=None, metavar="KEY",
              help="ed25519 private key (PEM): also write OUTPUT.sig (see lcs/signing.py)")
@fail_cleanly
def build_cmd(checkpoint_path, target, levels, strategy, tune, threads, rpc, tracker, key, int8, int8_store,
              eval_results, output, progress, as_json, sign_key):
    """Compile a checkpoint for a board into one verified artifact."""
    from lcs.atomic import check_writable
    from lcs.report import print_build
    build = _compiler()

    check_writable(output, "-o")  # before compiling, not after
    signer = None
    if sign_key is not None:
        from lcs import signing

        signer = signing.load_private_key(sign_key)  # a bad key fails now, not after the build

    with stdout_for_json_only(as_json):
        summary = build(checkpoint_path, target, output, levels=levels, strategy=strategy, tune=tune, threads=threads,
                        rpc=rpc, tracker=tracker, key=key, eval_results=eval_results,
                        progress=progress and not as_json, log=lambda msg: click.echo(msg, err=True), int8=int8,
                        int8_store=int8_store)
    if signer is not None:
        summary["signature"] = str(signing.sign_artifact(output, signer))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_build(summary)


@cli.command("info")
@click.argument("artifact_path", metavar="ARTIFACT", type=click.Path(path_type=Path))
@click.option("--target", default=None, help="refuse an artifact built for another board")
@click.option("--json", "as_json", is_flag=True, help="print everything as JSON")
@fail_cleanly
def info_cmd(artifact_path, target, as_json):
    """Show what an artifact holds: target, strategy, levels, sizes, verification."""
    from lcs.artifact import describe

    info = describe(artifact_path, target)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        from lcs.report import print_info

        print_info(info)


# -- end build / info -----------------------------------------------------------------------------


# -- deploy (issue 6) -----------------------------------------------------------------------------

verify_key_option = click.option(
    "--verify-key", type=click.Path(path_type=Path), default=None, metavar="PUB",
    help="ed25519 public key (PEM): refuse the artifact unless ARTIFACT.sig is its valid signature")


def verify_signature(artifact_path: Path, verify_key: Path | None) -> None:
    """With --verify-key, refuse an unsigned or wrongly signed artifact (lcs/signing.py); without it, nothing."""
    if verify_key is not None:
        from lcs.signing import verify_artifact

        verify_artifact(artifact_path, verify_key)


@cli.command("deploy")
@click.argument("artifact_path", metavar="ARTIFACT", type=click.Path(path_type=Path))
@board_options("")
@click.option("--trace-io", is_flag=True, help="hex-dump every frame with a timestamp (stderr)")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@verify_key_option
@fail_cleanly
def deploy_cmd(artifact_path, device_url, sim_board, rpc, tracker, key, trace_io, progress, as_json, verify_key):
    """Upload an artifact's model to a board, have it confirm what it holds, self-test and profile every level."""
    from rich.console import Console

    from lcs.deploy import check_passed, deploy, print_report

    verify_signature(artifact_path, verify_key)  # before anything from it runs

    err = Console(stderr=True)
    report = deploy(artifact_path, device=device_url, sim=sim_board, rpc=rpc, tracker=tracker, key=key,
                    trace_io=trace_io, progress=progress and not as_json, console=err)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, Console())
    check_passed(report)


# -- end deploy -----------------------------------------------------------------------------------


# -- flash (issue 18) -----------------------------------------------------------------------------

@cli.command("flash")
@click.argument("artifact_path", metavar="ARTIFACT", type=click.Path(path_type=Path))
@click.option("--probe", default=None, metavar="UID",
              help="debug probe unique ID (pyocd list) [default: the one attached]")
@click.option("--port", default=None, metavar="URL",
              help="the board's serial port for the self-test [default: the probe's virtual COM port]")
@click.option("--tool", type=click.Choice(["pyocd", "openocd"]), default="pyocd", show_default=True,
              help="OpenOCD where the board file names its config")
@click.option("--dry-run", is_flag=True, help="print exactly what would run, touch nothing")
@click.option("--no-self-test", is_flag=True, help="only write the firmware")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the self-test report as JSON")
@verify_key_option
@fail_cleanly
def flash_cmd(artifact_path, probe, port, tool, dry_run, no_self_test, progress, as_json, verify_key):
    """Write an artifact's firmware to a board (pyOCD / OpenOCD), then self-test every level like `lcs deploy`."""
    from rich.console import Console

    from lcs import flash
    from lcs.artifact import open_artifact
    from lcs.deploy import check_passed, print_report

    verify_signature(artifact_path, verify_key)  # before its firmware reaches a board

    if dry_run:
        art = open_artifact(artifact_path)
        for line in flash.describe_dry_run(art, flash.flash_plan(art, probe=probe, tool=tool), port):
            click.echo(line)
        return
    result = flash.flash(artifact_path, probe=probe, port=port, tool=tool, self_test=not no_self_test,
                         progress=progress and not as_json, console=Console(stderr=True))
    click.echo(f"flashed {result.plan.image_member} to {result.plan.board} with {result.plan.tool}"
               f"{f' (probe {result.probe})' if result.probe else ''}", err=as_json)
    if result.report is not None:
        if as_json:
            click.echo(json.dumps(result.report.to_dict(), indent=2))
        else:
            print_report(result.report, Console())
        check_passed(result.report)


# -- end flash ------------------------------------------------------------------------------------


def main() -> None:
    # rich tables fall back to 80 columns when output is piped or logged; 120 keeps the level tables readable.
    if not sys.stdout.isatty():
        os.environ.setdefault("COLUMNS", "120")
    cli(prog_name="lcs")


if __name__ == "__main__":
    main()
