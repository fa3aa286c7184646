"""int8 levels on CPUs (`lcs build --target host|rasp4 --int8`, tvm_build/cpu_int8.py): the C kernels of
firmware_host/src/cpu equal the integer reference (lcs/int8/graph.py) bit for bit on every instruction set they have
(AVX-512 VNNI, AVX2, NEON, plain C), and an int8 artifact runs through lcs.runtime like any other."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from lcs.cli import cli
from lcs.int8.cpu_c import emit_cpu
from lcs.int8.firmware_c import device_forward
from lcs.int8.from_torch import from_torch
from lcs.int8.graph import Add, Conv, GroupNorm, quantize
from tvm_build.cpu_int8 import compile_level, isa

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
float *lcs_input(void); float *lcs_output(void); int lcs_run(int threads);
int main(int argc, char **argv) {
    const size_t n_in = (size_t)atoi(argv[1]), n_out = (size_t)atoi(argv[2]);
    const int threads = atoi(argv[3]);
    while (fread(lcs_input(), sizeof(float), n_in, stdin) == n_in) {
        const int rc = lcs_run(threads);
        if (rc) return 10 - rc;
        fwrite(lcs_output(), sizeof(float), n_out, stdout);
    }
    return 0;
}
"""


class _Net(nn.Module):
    """Every kernel path: a 3-channel stem and a 5-channel input (gathered windows), 3x3 and 1x1 convs over a padded
    copy (taps), stride 2, channel counts off the 16-channel blocks (tails), GroupNorm, an add after a GroupNorm (the
    Add op), a residual add fused into a conv, depthwise with ReLU6, signed activations into a conv, pool, dense; 9x9
    input (tiles past a row's end)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 5, 3, 1, 1), nn.BatchNorm2d(5), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(5, 20, 3, 2, 1, bias=False), nn.GroupNorm(4, 20), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(20, 20, 3, 1, 1, bias=False), nn.GroupNorm(4, 20))
        self.dw = nn.Sequential(nn.Conv2d(20, 20, 3, 1, 1, groups=20), nn.BatchNorm2d(20), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(20, 36, 1), nn.BatchNorm2d(36))  # no ReLU: signed output
        self.mix = nn.Sequential(nn.Conv2d(36, 36, 3, 2, 0), nn.BatchNorm2d(36))
        self.mix2 = nn.Sequential(nn.Conv2d(36, 36, 1), nn.BatchNorm2d(36))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(36, 10)

    def forward(self, x):
        x = self.down(self.stem(x))
        x = torch.relu(self.body(x) + x)
        x = self.expand(self.dw(x))
        y = self.mix(x)
        y = torch.relu(self.mix2(y) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    net = _Net().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    g = from_torch(net, (3, 9, 9), adds=True)
    kinds = {type(op) for op in g.ops}
    assert {Add, Conv, GroupNorm} <= kinds and any(isinstance(op, Conv) and op.add for op in g.ops)
    return quantize(g, np.random.default_rng(0).normal(size=(32, 9, 9, 3)))


def _inputs(chw=(3, 9, 9)) -> np.ndarray:
    x = np.random.default_rng(1).normal(size=(6, *chw)).astype(np.float32)
    x[0] *= 20  # clamps at the input and through the layers
    return x


def _run(graph, tmp_path, name, cc, flags, runner=(), threads=(1,), chw=(3, 9, 9)) -> list[np.ndarray]:
    """The outputs of each thread count in `threads` (one build)."""
    harness = tmp_path / "harness.c"
    harness.write_text(HARNESS)
    # every job split between the threads, however small (this net's layers are far below the pool's threshold)
    exe = compile_level(emit_cpu(graph, chw), cc, [*flags, "-DQ8P_MIN_NS=1"], tmp_path / name, program=harness)
    x = _inputs(chw)
    outs = []
    for n in threads:
        proc = subprocess.run([*runner, str(exe), str(x[0].size), "10", str(n)], input=x.tobytes(),
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()[-500:]
        outs.append(np.frombuffer(proc.stdout, np.float32).reshape(len(x), 10))
    return outs


def _expected(graph, chw=(3, 9, 9)) -> np.ndarray:
    return device_forward(graph, _inputs(chw).transpose(0, 2, 3, 1)).astype(np.float32)


# this machine's best, AVX2 without AVX-512, and portable C: every x86 path that can run here
X86 = [["-march=native"], ["-march=haswell"], ["-march=x86-64"]]


@pytest.mark.skipif(subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() != "x86_64",
                    reason="the x86 instruction sets run on x86 only")
def test_x86_paths_equal_the_integer_reference(graph, tmp_path):
    want = _expected(graph)
    seen = set()
    # Q8C_FALLBACK=1: the AVX-512 kernels' general forms (q8_cpu.c), which this net's numbers never need
    for flags in [*X86, ["-march=native", "-DQ8C_FALLBACK=1"], ["-march=native", "-DQ8C_FALLBACK=2"]]:
        name = "-".join(f.split("=")[1] for f in flags)
        for n, got in zip((1, 2, 3), _run(graph, tmp_path, name, "gcc", flags, threads=(1, 2, 3))):
            np.testing.assert_array_equal(got, want, err_msg=f"{' '.join(flags)}, {n} threads")
        seen.add(isa("gcc", flags))
    assert {"avx2", "scalar"} <= seen, seen


class _WideNet(nn.Module):
    """Rows wider than 16 pixels (the VNNI kernels' taps path, tiles within a row): 22 = 16 + 6 pixels in 16-channel
    tiles, 12 + 10 in 32-channel ones with a 16-channel group after them (40 channels), 20 = 12 + 8 after a 3x3 conv
    without padding, and a residual fused into a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 40, 3, 1, 1), nn.BatchNorm2d(40), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(40, 24, 3, 1, 0), nn.BatchNorm2d(24))
        self.d = nn.Sequential(nn.Conv2d(24, 24, 1), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        y = self.c(self.b(self.a(x)))
        y = torch.relu(self.d(y) + y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.skipif(subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() != "x86_64",
                    reason="the x86 instruction sets run on x86 only")
def test_x86_wide_rows_equal_the_integer_reference(tmp_path):
    torch.manual_seed(1)
    net = _WideNet().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    chw = (3, 5, 22)
    g = quantize(from_torch(net, chw, adds=True), np.random.default_rng(0).normal(size=(32, 5, 22, 3)))
    assert any(isinstance(op, Conv) and op.add for op in g.ops)
    want = _expected(g, chw)
    for flags in X86[:2]:  # VNNI (where this machine has it) and AVX2: the paths that tile rows differently
        for n, got in zip((1, 2), _run(g, tmp_path, "wide-" + flags[0].split("=")[1], "gcc", flags, threads=(1, 2),
                                       chw=chw)):
            np.testing.assert_array_equal(got, want, err_msg=f"{' '.join(flags)}, {n} threads")


@pytest.mark.qemu
def test_neon_path_equals_the_integer_reference_under_qemu(graph, tmp_path):
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static"):
        assert shutil.which(tool), f"{tool} is part of the qemu test setup"
    flags = ["-mcpu=cortex-a72"]
    assert isa("aarch64-linux-gnu-gcc", flags) == "neon"
    one, two = _run(graph, tmp_path, "a72", "aarch64-linux-gnu-gcc", flags, runner=["qemu-aarch64-static"],
                    threads=(1, 2))
    np.testing.assert_array_equal(one, _expected(graph))
    np.testing.assert_array_equal(two, _expected(graph))


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def quant_line(train_tiny):
    return train_tiny("quantization")  # the project's default quantization model: LCS+L, GroupNorm


@pytest.mark.tvm  # lcs.runtime loads the TVM runtime
def test_host_int8_build_runs_bit_exact_through_the_runtime(quant_line, tmp_path):
    import ctypes

    from lcs.artifact import open_artifact
    from lcs.runtime import RunError, Runtime

    out = tmp_path / "q8.lcsa"
    result = _cli("build", quant_line, "--target", "host", "--int8", "--levels", "bits=4,bits=8", "--threads", "2",
                  "-o", out, "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)  # --json: JSON and nothing else on stdout
    assert manifest["precision"] == "int8" and manifest["int8"]["isa"] == isa("gcc", ["-march=native"])
    # each level timed at 1 and 2 threads and given the fewer within 3 % of its fastest (verified on both)
    assert manifest["runtime"]["threads"] == 2 and set(manifest["runtime"]["latency_ms_by_threads"]) == {"1", "2"}
    assert all(lv["latency_ms"] > 0 and lv["threads"] in (1, 2) for lv in manifest["levels"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(out)
    assert rt.executors == ["int8", "int8"]
    for count in (1, 2):  # forced onto each count: the integer reference between the same float conversions, exactly
        for lib in rt._int8.values():
            lib.threads(count)
        assert rt.check() == [0.0, 0.0]
    assert rt.time(1, number=5, repeat=2) > 0
    with pytest.raises(RunError, match="threads must be >= 1, got 0"):
        rt.set_threads(0)
    # the entry point itself refuses a count outside [1, 64] (and computes nothing)
    art = open_artifact(out)
    path = tmp_path / "level0.so"
    path.write_bytes(art.read(art.levels[0].library))
    lib = ctypes.CDLL(str(path))
    assert [lib.lcs_run(n) for n in (0, -3, 65)] == [-1, -1, -1] and lib.lcs_run(1) == 0


def test_int8_for_linux_boards_refuses_what_it_cannot_do(one_line_error, quant_line, tmp_path, monkeypatch):
    out = tmp_path / "x.lcsa"
    import lcs.int8.from_torch as ft
    from lcs.errors import LcsError

    def refuse(*args, **kwargs):  # what the converter says of a layer it has no kernel for
        raise LcsError("int8: layer features.3 (Upsample) has no integer kernel")

    with monkeypatch.context() as patch:
        patch.setattr(ft, "from_torch", refuse)
        one_line_error(_cli("build", quant_line, "--target", "host", "--int8", "-o", out),
                       "--int8: level 8 bit: layer features.3 (Upsample) has no integer kernel")
    one_line_error(_cli("build", quant_line, "--target", "host", "--int8", "--tune", "4", "-o", out),
                   "--int8 levels are C integer kernels")
    one_line_error(_cli("build", quant_line, "--target", "host", "--int8", "--threads", "0", "-o", out),
                   "--threads wants a count >= 1, got 0")
    one_line_error(_cli("build", quant_line, "--target", "host", "--int8", "--threads", "65", "-o", out),
                   "--int8 levels run on at most 64 threads, got --threads 65")
    one_line_error(_cli("build", quant_line, "--target", "host", "--int8-store", "ready", "-o", out),
                   "--int8-store chooses a firmware weight store")
    assert not out.exists()


def test_int8_thread_choice_takes_the_fewest_threads_within_3_percent():
    from tvm_build.cpu_int8 import choose_threads

    # level 0 gains from 2 threads, level 1 does not (2 % apart: noise), level 2 is fastest on 4
    by_threads = {1: [0.25, 0.10, 1.0], 2: [0.17, 0.098, 0.6], 4: [0.18, 0.12, 0.4]}
    assert choose_threads(by_threads, 3) == [2, 1, 4]
