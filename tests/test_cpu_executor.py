"""tvm_build/cpu_executor.py and static_plan.py: a small torch network through the static executor, no lcs build.

The network has what the executor must handle beyond a chain of kernels: a flatten and bias reshapes (aliases, no call),
a weight-only computation (the linear layer's transposed weight: run once per binding, kept in the state region)
and intermediates whose arena bytes are reused."""

from __future__ import annotations

import ctypes
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import targets
import tvm  # noqa: F401  (TVM is part of the test install: a missing one must fail, not skip)
from lcs.artifact import TensorSpec
from lcs.runtime import _StaticLibrary, aligned_copy
from tvm_build import compile as tc
from tvm_build.export import to_relax
from tvm_build.target import host_target, make_target
from tvm_build import cpu_executor, schedules
from tvm_build.graph import export_order, param_arrays

pytestmark = pytest.mark.tvm


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv2(torch.relu(self.conv(x)))), 1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = Small().eval()
    x = torch.rand(1, 1, 8, 8)
    mod, ep = to_relax(net, (x,))
    arrays = param_arrays(net)
    weights = [arrays[name] for name in export_order(ep)]
    with torch.no_grad():
        expected = net(x).numpy()
    return tc.fuse_kernels(mod, host_target()), weights, x.numpy(), expected


def test_plan_aliases_reshapes_runs_weight_work_once_and_reuses_the_arena(small):
    mod, weights, _, _ = small
    p = cpu_executor.plan_module(cpu_executor.kernel_module(mod))
    kinds = [t.kind for t in p.tensors.values()]
    assert kinds.count("weight") == len(weights)
    aliases = [t for t in p.tensors.values() if t.kind == "alias"]
    assert all(p.root(t.name).kind != "alias" for t in aliases)
    # the flatten (an activation) and the conv biases reshaped to (1, C, 1, 1) (weights: rebound with them)
    assert {(t.shape, p.root(t.name).kind) for t in aliases} == {((1, 256), "arena"), ((1, 4, 1, 1), "weight")}
    # the transposed fc weight depends on weights alone: computed per binding, kept for every inference
    assert p.calls_in("switch") and all(p.tensors[c.args[-1]].kind == "state" for c in p.calls_in("switch"))
    assert p.state_bytes >= 256 * 10 * 4
    infer = p.calls_in("infer")
    assert len(infer) >= 3
    # 64-byte alignment everywhere; the two conv outputs may not overlap while both are live, but the arena is
    # smaller than every intermediate laid end to end
    arena = [p.tensors[c.args[-1]] for c in infer]
    assert all(t.offset % 64 == 0 for t in p.tensors.values() if t.kind in ("arena", "state"))
    assert p.arena_bytes < sum(-(-t.nbytes // 64) * 64 for t in arena)
    first, second = arena[0], arena[1]
    assert first.offset + first.nbytes <= second.offset or second.offset + second.nbytes <= first.offset


def _built(small, tmp_path):
    mod, weights, x, expected = small
    path = tmp_path / "small.so"
    target = host_target()
    info = tc.build_library(schedules.apply(mod, target), target, targets.load("host"), path)  # as lcs build does
    assert info["executor"] == "static", info
    lib = tvm.runtime.load_module(str(path))  # TVM fills in the kernels' runtime hooks
    return lib, path, weights, x, expected


def test_static_library_runs_like_torch_through_ctypes(small, tmp_path):
    lib, path, weights, x, expected = _built(small, tmp_path)
    assert not hasattr(ctypes.CDLL(str(path)), "__tvm_ffi___vmtir__main")  # no VM program in the library
    static = _StaticLibrary(path, TensorSpec((1, 1, 8, 8), "float32"), TensorSpec((1, 10), "float32"))
    with pytest.raises(Exception, match="no weights bound"):
        static.run()
    kept = [aligned_copy(w) for w in weights]
    static.bind(static.pointers(kept))
    static.input[...] = x
    before = len(os.listdir("/proc/self/task"))
    for count in (1, 2, 3, 0):  # inline parallel loops, the library's own pool, then TVM's: the same numbers
        static.threads(count)
        np.testing.assert_allclose(static.run(), expected, atol=1e-5)
        if count == 3:  # the scheduled convs' loops are parallel and run on the library's pool: two workers
            assert len(os.listdir("/proc/self/task")) == before + 2
    static.park()
    # another weight set: the weight-only work is redone at binding
    doubled = [aligned_copy(w * 2) for w in weights]
    static.bind(static.pointers(doubled))
    assert not np.allclose(static.run(), expected, atol=1e-3)
    static.bind(static.pointers(kept))
    np.testing.assert_allclose(static.run(), expected, atol=1e-5)


def test_packed_entry_points_check_every_tensor_before_binding(small, tmp_path):
    lib, path, weights, x, expected = _built(small, tmp_path)
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros((1, 10), np.float32), dev)
    xt = tvm.runtime.tensor(x, dev)
    with pytest.raises(Exception, match="no weights bound"):
        lib[cpu_executor.ENTRY](xt, y)
    good = [tvm.runtime.tensor(w, dev) for w in weights]
    lib[cpu_executor.SET_WEIGHTS](*good)
    lib[cpu_executor.ENTRY](xt, y)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)
    # a set whose last tensor has the wrong shape is refused whole: the first tensors are not bound either
    bad = [tvm.runtime.tensor(w * 3, dev) for w in weights[:-1]] + [tvm.runtime.tensor(np.zeros(3, np.float32), dev)]
    with pytest.raises(Exception, match="does not match"):
        lib[cpu_executor.SET_WEIGHTS](*bad)
    with pytest.raises(Exception, match=f"expected {len(good)} tensors"):
        lib[cpu_executor.SET_WEIGHTS](*good[:-1])
    with pytest.raises(Exception, match="does not match"):
        lib[cpu_executor.ENTRY](tvm.runtime.tensor(np.zeros((1, 1, 4, 4), np.float32), dev), y)
    y2 = tvm.runtime.tensor(np.zeros((1, 10), np.float32), dev)
    lib[cpu_executor.ENTRY](xt, y2)
    np.testing.assert_allclose(y2.numpy(), expected, atol=1e-5)


def test_cross_compiled_executor_links_for_the_pis(small, tmp_path):
    mod = small[0]
    for name in ("rasp4", "rasp4-32"):
        board = targets.load(name)
        if shutil.which(board.cross_compiler) is None:
            pytest.fail(f"{board.cross_compiler} missing: scripts/setup.sh installs {board.debian_package}")
        path = tmp_path / f"{name}.so"
        info = tc.build_library(mod, make_target(board), board, path)
        assert info["executor"] == "static"
        header = path.read_bytes()[:20]
        machine = int.from_bytes(header[18:20], "little")
        assert machine == {"rasp4": 183, "rasp4-32": 40}[name]  # EM_AARCH64, EM_ARM
