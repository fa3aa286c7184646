"""The CLI through click's runner: the happy path, and each bad input as one line + non-zero exit."""

import json

import pytest
from click.testing import CliRunner

from lcs.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    line = d / "line.safetensors"
    fixed = d / "fixed.safetensors"
    r = run("train", "--data", "digits", "--family", "unstructured", "--epochs", "1", "-o", line, "--no-progress")
    assert r.exit_code == 0, r.output
    r = run("train", "--data", "digits", "--method", "fixed", "--alpha", "sparsity=0.9", "--epochs", "1", "-o", fixed,
            "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["config"]["train"]["fixed_alpha"] == pytest.approx(0.1)
    return line, fixed


def test_help_everywhere():
    for args in ([], ["train"], ["eval"]):
        r = run(*args, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


def test_eval_table_json_csv_and_plot(trained, tmp_path):
    line, fixed = trained
    r = run("eval", line, "--levels", "keep=0.1,0.5,1", "--baseline", fixed, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    assert "LCS+L" in r.output and "fixed (90.0% sparse)" in r.output
    for name in ("results.json", "results.csv", "accuracy.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 0
    assert (tmp_path / "ev" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(run("eval", line, "--levels", "0.1,1", "--json").output)
    assert [r["alpha"] for r in rows] == [0.1, 1.0]
    assert rows[0]["zero_fraction"] > 0.5 and rows[1]["zero_fraction"] == 0.0
    csv = run("eval", line, "--levels", "1", "--csv").output.splitlines()
    assert csv[0].startswith("model,alpha") and len(csv) == 2


def one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs_each_get_one_line(trained, tmp_path):
    line, _ = trained
    out = tmp_path / "never.safetensors"
    one_line_error(run("train", "--data", tmp_path / "nope", "-o", out), "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(run("train", "--data", f"folder:{tmp_path / 'empty'}", "-o", out), "no images")
    one_line_error(run("train", "--data", "digits", "--model", "vgg99", "-o", out), "unknown model")
    one_line_error(run("eval", line, "--data", "mnist5k"), "1x28x28 images but the model expects 1x8x8")
    one_line_error(run("eval", line, "--levels", "1.5"), "outside the trained range")
    one_line_error(run("eval", line, "--levels", "0.01"), "outside the trained range")
    one_line_error(run("train", "--data", "digits", "--method", "fixed", "--alpha", "-0.2", "-o", out), "outside")
    one_line_error(run("train", "--data", "digits", "--sampler", "nope", "-o", out), "unknown sampler")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    one_line_error(run("eval", junk), "not a safetensors file")
    assert not out.exists()
    one_line_error(run("train", "--data", "digits", "--family", "pruning", "-o", out), "pruning")
    one_line_error(run("train", "--data", "digits"), "--output")
    one_line_error(run("frobnicate"), "No such command")
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_baseline_of_another_family_is_refused(trained, train_tiny):
    line, _ = trained
    other = train_tiny("quantization", "point", 4)  # the family is checked before anything else about the model
    one_line_error(run("eval", line, "--baseline", other), "compresses by quantization")


def test_build_finds_the_compiler_through_its_entry_point(monkeypatch, tmp_path):
    """lcs/ never imports tvm_build: the installed package registers `lcs.compilers: tvm`; without it, one line."""
    import importlib.metadata

    from lcs import cli as cli_module

    assert cli_module._compiler().__module__ == "tvm_build.build"
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    r = run("build", tmp_path / "x.safetensors", "--target", "host", "-o", tmp_path / "x.lcsa")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [r.output.strip()] and "needs the compiler (tvm_build)" in r.output
    assert not (tmp_path / "x.lcsa").exists()
