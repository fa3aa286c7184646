"""CPU kernels without tuning (issue 16): the default schedules (tvm_build/schedules.py) and the CSR kernels of sparse
levels (tvm_build/sparse.py), checked against torch and planned by the static executor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tvm  # noqa: F401  (TVM is part of the test install: a missing one must fail, not skip)

from tvm_build.target import host_target

pytestmark = pytest.mark.tvm


class OneByOnes(nn.Module):
    """A 3x3 conv (never a candidate), then two 1x1 convs (candidates) on 6x6 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 24, 1, bias=False)
        self.project = nn.Conv2d(24, 8, 1)

    def forward(self, x):
        return self.project(torch.relu(self.expand(torch.relu(self.stem(x)))))


@pytest.mark.parametrize("paired", [False, True], ids=["one-sum-hwc", "two-sums-chw"])
def test_csr_kernels_match_torch_and_plan_statically(monkeypatch, tmp_path, paired):
    from tvm.runtime.vm import VirtualMachine

    from tvm_build import compile as tc
    from tvm_build import cpu_executor, export, sparse
    from tvm_build.graph import export_order, param_arrays
    from tvm_build.target import host_target

    torch.manual_seed(0)
    net = OneByOnes().eval()
    with torch.no_grad():
        for conv in (net.expand, net.project):  # 90 % zeros, as an unstructured level's
            conv.weight[torch.rand_like(conv.weight) < 0.9] = 0
        net.project.weight[3] = 0  # an output channel with no nonzeros at all
    x = torch.randn(1, 3, 6, 6)
    mod, ep = export.to_relax(net, (x,))
    lifted = export.ChannelsLast(mod, export_order(ep))
    arrays = lifted.weights({n: param_arrays(net)[n] for n in export_order(ep)})
    assert sorted(c.weight for c in sparse.candidates(lifted.main, list(arrays)).values()) == \
        ["expand.weight", "project.weight"]

    target = host_target()
    monkeypatch.setattr(sparse, "MARGIN", 1e9)  # take the CSR kernel whatever the timing: this checks numbers
    if paired:  # the two-partial-sums loop of long rows (rows of odd and even lengths, and an empty one)
        monkeypatch.setattr(sparse, "PAIRED_ROW", 0)
    threads = 2 if paired else 1  # planned for two threads: chosen on one, both recorded
    # the level's layout by its timings; here forced: channels-last, or the CHW stretch (stem, ReLUs, both 1x1s)
    monkeypatch.setattr(sparse, "LEVEL_MARGIN", 1e9 if paired else 1e-9)
    new, weights, how, records, stretch = sparse.Chooser(target, threads)(lifted.main, arrays, lifted.from_torch)
    kind = "csr_chw" if paired else "csr"
    assert [r["kernel"] for r in records] == [kind, kind] and all(r["dense_us"] > 0 for r in records)
    assert all(r["chw_us"] > 0 for r in records) and stretch["layout"] == ("chw" if paired else "hwc")
    assert set(stretch["level_us"]) == {"hwc", "chw>=1"} and all(t > 0 for t in stretch["level_us"].values())
    assert all(("at_threads" in r) == paired for r in records)
    assert not paired or all(len(r["at_threads"]["2"]) == 3 for r in records)
    assert "expand.weight" not in weights and weights["expand.weight:csr.indices"].dtype == np.int32
    assert weights["project.weight:csr.indptr"].shape == (9,) and "csr" in how["project.weight:csr.data"]
    # the stored CSR arrays follow the nonzeros
    nnz = int(np.count_nonzero(arrays["expand.weight"]))
    assert weights["expand.weight:csr.data"].size == nnz < 0.2 * arrays["expand.weight"].size

    dev = tvm.cpu()
    vm = VirtualMachine(tc.compile_module(new, target), dev)
    got = vm["main"](tvm.runtime.tensor(x.numpy(), dev),
                     *[tvm.runtime.tensor(a, dev) for a in weights.values()]).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-5)
    # the static executor plans it: the CSR kernels are plain call_tir kernels with int32 inputs
    plan = cpu_executor.plan_module(cpu_executor.kernel_module(tc.fuse_kernels(new, target)))
    assert sum(("sparse_chw_conv1x1" if paired else "sparse_conv1x1") in c.kernel for c in plan.calls) == 2
    # the CHW stretch starts at the network's NCHW input: the stem runs CHW, no transpose before it
    assert paired == any("conv3x3_chw" in c.kernel for c in plan.calls)


# (height, width, cin, cout, density, threads): the kernel's variants. 8x8: 16-pixel blocks stored as rows of 8
# channels; 2x2 and 4x4 on two threads: one pixel block split by output channels (12 channels as blocks of 4, the
# last task short); 50 %: long rows (two partial sums, rows stored one channel at a time)
CSR_SHAPES = [(8, 8, 32, 16, 0.1, 1), (2, 2, 40, 24, 0.1, 2), (4, 4, 24, 12, 0.1, 2), (4, 4, 64, 24, 0.5, 2),
              (6, 6, 8, 24, 0.1, 1)]


def test_csr_kernel_variants_equal_dense_on_random_sparse_weights():
    from tvm_build import sparse

    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    funcs, cases = {}, []
    for i, (h, w, cin, cout, density, threads) in enumerate(CSR_SHAPES):
        weight = rng.standard_normal((1, 1, cin, cout)).astype(np.float32)
        weight[rng.random(weight.shape) >= density] = 0
        weight[..., 1] = 0  # an output channel with no nonzeros
        csr = sparse.to_csr(weight)
        c = sparse.Candidate("w", h, w, cin, cout)
        funcs[f"k{i}"] = sparse.csr_kernel(c, int(np.count_nonzero(weight)), threads).with_attr("global_symbol",
                                                                                                 f"k{i}")
        cases.append((rng.standard_normal((1, h, w, cin)).astype(np.float32), weight, csr))
    assert sparse._chunks(sparse.Candidate("w", 4, 4, 24, 12), 2) == 2  # the split is exercised
    assert sparse._out_block(sparse.Candidate("w", 8, 8, 32, 16)) == 8
    lib = tvm.compile(tvm.IRModule(funcs), target=host_target()).mod
    for i, (x, weight, csr) in enumerate(cases):
        out = tvm.runtime.tensor(np.full(x.shape[:3] + weight.shape[3:], np.nan, np.float32), dev)
        lib[f"k{i}"](tvm.runtime.tensor(x, dev), *[tvm.runtime.tensor(csr[p], dev) for p in sparse.CSR_PARTS], out)
        np.testing.assert_allclose(out.numpy(), np.einsum("nhwc,cd->nhwd", x, weight[0, 0]), atol=1e-4,
                                   err_msg=str(CSR_SHAPES[i]))


def test_dense_weights_and_denser_layers_are_left_alone():
    from tvm_build import export, sparse
    from tvm_build.graph import export_order, param_arrays
    from tvm_build.target import host_target

    net = OneByOnes().eval()  # random weights: no zeros
    x = torch.randn(1, 3, 6, 6)
    mod, ep = export.to_relax(net, (x,))
    lifted = export.ChannelsLast(mod, export_order(ep))
    arrays = lifted.weights({n: param_arrays(net)[n] for n in export_order(ep)})
    new, weights, _, records, stretch = sparse.Chooser(host_target(), 1)(lifted.main, arrays, lifted.from_torch)
    assert new is lifted.main and weights is arrays and records == [] and stretch is None


class MobileBlock(nn.Module):
    """What the default schedules must cover: a full conv, a depthwise conv, a 1x1 conv, ReLU6 (left in NCHW between
    two transposes by ConvertLayout), pooling and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = nn.functional.relu6(self.depthwise(torch.relu(self.stem(x))))
        return self.head(self.project(x).mean((2, 3)))


def test_default_schedules_cover_convolutions_and_match_torch():
    from tvm import tirx

    torch.manual_seed(0)
    net = MobileBlock().eval()
    x = torch.randn(1, 3, 8, 8)
    _, done, got = _fuse_schedule_run(net, (), x)
    kernels = {gv.name_hint: f for gv, f in done.functions.items() if isinstance(f, tirx.PrimFunc)}
    scheduled = {n for n, f in kernels.items() if f.attrs is not None and "tirx.is_scheduled" in f.attrs}
    convs = {n for n in kernels if "conv2d" in n}
    assert len(convs) >= 3 and convs <= scheduled, (convs, scheduled)  # full, depthwise and 1x1 all scheduled
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-5)


class NormBlock(nn.Module):
    """Conv -> GroupNorm -> ReLU6 twice, as the model zoo's blocks (groups of 4 channels, then instance norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.norm = nn.GroupNorm(6, 24)
        self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.instance = nn.GroupNorm(24, 24, eps=1e-3)

    def forward(self, x):
        x = nn.functional.relu6(self.norm(self.conv(x)))
        return nn.functional.relu6(self.instance(self.depthwise(x)))


def test_group_norm_kernels_get_their_own_loops_and_match_torch():
    from tvm import tirx

    from tvm_build import schedules

    torch.manual_seed(0)
    net = NormBlock().eval()
    x = torch.randn(1, 3, 6, 6) * 2 + 1  # statistics away from 0/1
    fused, done, got = _fuse_schedule_run(net, (net.norm, net.instance), x)
    norms = [f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc) and "group_norm" in gv.name_hint]
    found = [schedules._group_norm_params(f) for f in norms]
    assert sorted(p[:5] for p in found) == [(6, 6, 24, 6, 1e-5), (6, 6, 24, 24, 1e-3)]
    # ReLU6 fused into the first norm (export moves the clip out from between ConvertLayout's transposes)
    assert sorted(p[5] is not None for p in found) == [False, True]
    kernels = [f for gv, f in done.functions.items() if isinstance(f, tirx.PrimFunc) and "group_norm" in gv.name_hint]
    # replaced by group_norm_kernel: no blocks left (the legalized kernel's reshapes are gone)
    assert kernels and all("tirx.is_scheduled" in f.attrs and "sblock" not in f.script() for f in kernels)
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-5)


def _fuse_schedule_run(net, norms, x):
    """`net` (the affine parameters of `norms` randomized) exported channels-last, fused, scheduled by
    tvm_build.schedules and run on `x`: (fused module, scheduled module, output)."""
    from tvm.runtime.vm import VirtualMachine

    from tvm_build import compile as tc
    from tvm_build import export, schedules
    from tvm_build.graph import export_order, param_arrays
    from tvm_build.target import host_target

    with torch.no_grad():
        for norm in norms:
            norm.weight.normal_()
            norm.bias.normal_()
    mod, ep = export.to_relax(net, (x,))
    lifted = export.ChannelsLast(mod, export_order(ep))
    arrays = lifted.weights({n: param_arrays(net)[n] for n in export_order(ep)})
    target = host_target()
    fused = tc.fuse_kernels(lifted.main, target)
    done = schedules.apply(fused, target)
    dev = tvm.cpu()
    got = VirtualMachine(tc.compile_module(done, target), dev)["main"](
        tvm.runtime.tensor(x.numpy(), dev), *[tvm.runtime.tensor(a, dev) for a in arrays.values()]).numpy()
    return fused, done, got


class WideBlock(nn.Module):
    """resnet18's late stage in small: 3x3 convs whose weights outweigh their 4x4 input (channel tiles outside,
    one 4-pixel row per tile), GroupNorm + residual add + ReLU (a norm kernel with a residual input), and a 10-way
    classifier (a matvec no vector width divides)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, 32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.norm1(self.conv1(x)))
        y = torch.relu(self.norm2(self.conv2(y)) + y)
        return self.head(y.mean((2, 3)))


def test_register_tiles_follow_row_width_and_channel_count():
    from tvm_build.schedules import _register_tile

    assert _register_tile(4, 512, 8) == (4, 32)  # a 4-wide row: 4 pixels x 4 vectors
    assert _register_tile(32, 64, 8) == (8, 16)  # 8 pixels x 2 vectors
    assert _register_tile(7, 96, 8) == (7, 16)  # a 7-wide row in one tile
    assert _register_tile(1, 10, 8) == (1, 10)  # classifier: the 10 outputs together
    assert _register_tile(16, 100, 4) == (8, 4)  # NEON: one vector when two do not divide


def test_weight_heavy_convs_and_residual_norms_match_torch():
    from tvm import tirx

    from tvm_build import schedules

    torch.manual_seed(0)
    net = WideBlock().eval()
    x = torch.randn(1, 3, 4, 4)
    fused, done, got = _fuse_schedule_run(net, (net.norm1, net.norm2), x)
    norms = [schedules._group_norm_params(f) for gv, f in fused.functions.items()
             if isinstance(f, tirx.PrimFunc) and "group_norm" in gv.name_hint]
    assert sorted((p[5] is not None, p[5] is not None and p[5].residual) for p in norms) == \
        [(True, False), (True, True)]  # ReLU, and add + ReLU with the residual as an input
    kernels = {gv.name_hint: f for gv, f in done.functions.items() if isinstance(f, tirx.PrimFunc)}
    unscheduled = {n for n, f in kernels.items() if f.attrs is None or "tirx.is_scheduled" not in f.attrs}
    assert not {n for n in unscheduled if "conv2d" in n or "matmul" in n or "group_norm" in n}, unscheduled
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-4)


def test_channels_first_norm_is_not_taken_for_channels_last():
    """A GroupNorm over axis 1 of a (1, 8, 8, 8) tensor (the alpha-input graph stays NCHW) has the buffer shapes of a
    channels-last one: it keeps TVM's loops rather than group_norm_kernel's."""
    from tvm import relax, tirx

    from tvm_build import compile as tc
    from tvm_build import schedules
    from tvm_build.target import host_target

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 8, 8, 8], "float32"))
    gamma, beta = (relax.Var(n, relax.TensorType([8], "float32")) for n in ("gamma", "beta"))
    with bb.function("main", [x, gamma, beta]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.group_norm(x, gamma, beta, num_groups=8, channel_axis=1, axes=[2, 3]))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    fused = tc.fuse_kernels(bb.get(), host_target())
    norms = [f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc) and "group_norm" in gv.name_hint]
    assert norms and all(schedules._group_norm_params(f) is None for f in norms)


def test_chw_kernels_equal_torch(monkeypatch):
    """The CHW stretch's kernels (tvm_build/sparse_chw.py) against torch: CSR 1x1 (pixel blocks of 64, 16 and 4, one
    and two sums, an empty row), depthwise (small planes as one vector, rows, stride 2 on wide and narrow planes,
    odd sizes), GroupNorm with each epilogue, and the stem."""
    from tvm_build import sparse
    from tvm_build import sparse_chw as sc
    from tvm_build.compile import compile_kernels

    rng = np.random.default_rng(0)
    funcs, cases = {}, {}

    def case(name, kernel, args, expect):
        funcs[name] = kernel.with_attr("global_symbol", name)
        cases[name] = (args, expect)

    for i, (h, w, cin, cout, density, paired) in enumerate([(8, 8, 16, 24, 0.1, False), (4, 4, 40, 12, 0.5, True),
                                                             (2, 2, 24, 16, 0.1, False), (3, 5, 8, 8, 0.5, True)]):
        weight = rng.standard_normal((1, 1, cin, cout)).astype(np.float32)
        weight[rng.random(weight.shape) >= density] = 0
        weight[..., 1] = 0
        x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
        csr = sparse.to_csr(weight)
        monkeypatch.setattr(sc, "PAIRED_ROW", 0 if paired else 1 << 20)
        case(f"csr{i}", sc.csr_chw_kernel(sparse.Candidate("w", h, w, cin, cout), int(np.count_nonzero(weight))),
             [x, *[csr[p] for p in sparse.CSR_PARTS], np.full((1, cout, h, w), np.nan, np.float32)],
             np.einsum("nchw,cd->ndhw", x, weight[0, 0]))
    for i, (h, w, c, stride) in enumerate([(2, 2, 8, 1), (4, 4, 8, 1), (8, 8, 4, 1), (16, 16, 4, 2), (8, 8, 4, 2),
                                           (5, 7, 4, 1), (7, 7, 4, 2)]):
        x = rng.standard_normal((1, c, h, w)).astype(np.float32)
        weight = rng.standard_normal((3, 3, 1, c)).astype(np.float32)
        expect = nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight).permute(3, 2, 0, 1), stride=stride,
                                      padding=1, groups=c).numpy()
        case(f"dw{i}", sc.depthwise_chw_kernel(h, w, c, stride), [x, weight, np.full(expect.shape, np.nan, np.float32)],
             expect)
    for i, (h, w, c, groups, epilogue) in enumerate([(4, 4, 24, 6, ("clip", 0.0, 6.0)), (2, 2, 16, 4, ("add",)),
                                                     (3, 3, 8, 8, ("none",))]):
        x = (rng.standard_normal((1, c, h, w)) * 3 + 1).astype(np.float32)
        gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        res = rng.standard_normal(x.shape).astype(np.float32)
        expect = nn.functional.group_norm(torch.from_numpy(x), groups, torch.from_numpy(gamma), torch.from_numpy(beta),
                                          1e-5).numpy()
        expect = np.clip(expect, 0, 6) if epilogue[0] == "clip" else expect + res if epilogue[0] == "add" else expect
        case(f"gn{i}", sc.group_norm_chw_kernel(h, w, c, groups, 1e-5, epilogue),
             [x, gamma, beta, *([res] if epilogue[0] == "add" else []), np.full(x.shape, np.nan, np.float32)], expect)
    x = rng.standard_normal((1, 3, 6, 10)).astype(np.float32)
    weight = rng.standard_normal((3, 3, 3, 8)).astype(np.float32)
    expect = nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight).permute(3, 2, 0, 1), padding=1).numpy()
    case("stem", sc.conv3x3_chw_kernel(6, 10, 3, 8), [x, weight, np.full(expect.shape, np.nan, np.float32)], expect)

    dev = tvm.cpu()
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        lib = compile_kernels(tvm.IRModule(funcs), host_target()).mod
    for name, (args, expect) in cases.items():
        tensors = [tvm.runtime.tensor(a, dev) for a in args]
        lib[name](*tensors)
        np.testing.assert_allclose(tensors[-1].numpy(), expect, atol=1e-4, rtol=1e-5, err_msg=name)
    # no kernel of the stretch asks TVM for heap memory per call but the stem (its bordered planes, once)
    assert lib.inspect_source("ll").count("load ptr, ptr @__TVMBackendAllocWorkspace") == 1


def test_chw_norm_statistics_fused_equal_torch():
    """A CHW block with its GroupNorms' statistics made by their producers (tvm_build/sparse_chw.py): CSR 1x1 with
    statistics -> depthwise normalising and clipping its input (each kernel body: one-vector planes, rows, stride 2
    wide and narrow (odd sizes); groups across task boundaries) with statistics -> one-pass GroupNorm, against torch.
    Case 1: the 1x1 conv without statistics, the depthwise conv making its input's from the values."""
    from tvm_build import sparse
    from tvm_build import sparse_chw as sc
    from tvm_build.compile import compile_kernels

    rng = np.random.default_rng(1)
    funcs, chains = {}, []
    for i, (h, w, cin, c, groups, stride) in enumerate([(2, 2, 8, 24, 8, 1), (7, 5, 6, 12, 3, 2),
                                                         (16, 16, 4, 8, 2, 2)]):
        weight = rng.standard_normal((1, 1, cin, c)).astype(np.float32)
        weight[rng.random(weight.shape) >= 0.5] = 0
        csr = sparse.to_csr(weight)
        dw = rng.standard_normal((3, 3, 1, c)).astype(np.float32)
        g1, b1, g2, b2 = (rng.standard_normal(c).astype(np.float32) for _ in range(4))
        x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        funcs[f"conv{i}"] = sc.csr_chw_kernel(sparse.Candidate("w", h, w, cin, c), int(np.count_nonzero(weight)),
                                              stats=i % 2 == 0)
        funcs[f"dw{i}"] = sc.depthwise_chw_kernel(h, w, c, stride, norm=(groups, 1e-5, 0.0, 6.0, i % 2 == 0),
                                                  stats=True)
        funcs[f"gn{i}"] = sc.group_norm_chw_kernel(ho, wo, c, groups, 1e-5, ("clip", 0.0, 6.0), stats=True)
        t = torch.from_numpy
        y = np.einsum("nchw,cd->ndhw", x, weight[0, 0])
        a = np.clip(nn.functional.group_norm(t(y), groups, t(g1), t(b1), 1e-5).numpy(), 0, 6)
        z = nn.functional.conv2d(t(a), t(dw).permute(3, 2, 0, 1), stride=stride, padding=1, groups=c).numpy()
        out = np.clip(nn.functional.group_norm(t(z), groups, t(g2), t(b2), 1e-5).numpy(), 0, 6)
        chains.append((i, x, csr, (g1, b1, dw), (g2, b2), (c, h * w, ho * wo), (y, z, out)))
    dev = tvm.cpu()
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        lib = compile_kernels(tvm.IRModule({k: f.with_attr("global_symbol", k) for k, f in funcs.items()}),
                              host_target()).mod

    def with_stats(v):  # what a producer with statistics writes: values, then (sum, sum of squares) per channel
        v = v.reshape(v.shape[1], -1).astype(np.float64)
        return np.concatenate([v.ravel(), np.stack([v.sum(1), (v * v).sum(1)], 1).ravel()])

    for i, x, csr, dw_args, gn_args, (c, p, po), (y, z, expect) in chains:
        tensor = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a, np.float32), dev)  # noqa: E731
        y_flat = tensor(np.full(c * p + 2 * c if i % 2 == 0 else y.shape, np.nan))
        lib[f"conv{i}"](tensor(x), *[tensor(csr[k]) if k == "data" else tvm.runtime.tensor(csr[k], dev)
                                     for k in sparse.CSR_PARTS], y_flat)
        np.testing.assert_allclose(y_flat.numpy(), with_stats(y) if i % 2 == 0 else y, atol=1e-3, rtol=1e-4,
                                   err_msg=f"conv{i}")
        z_flat = tensor(np.full(c * po + 2 * c, np.nan))
        lib[f"dw{i}"](y_flat, *[tensor(a) for a in dw_args], z_flat)
        np.testing.assert_allclose(z_flat.numpy(), with_stats(z), atol=1e-3, rtol=1e-4, err_msg=f"dw{i}")
        out = tensor(np.full(expect.shape, np.nan))
        lib[f"gn{i}"](z_flat, *[tensor(a) for a in gn_args], out)
        np.testing.assert_allclose(out.numpy(), expect, atol=1e-4, rtol=1e-4, err_msg=f"gn{i}")
    assert "@__TVMBackendAllocWorkspace" not in lib.inspect_source("ll")  # their sums stay in registers


class InvertedResidual(nn.Module):
    """mobilenet-v2's block with GroupNorms at 16x16 pixels: the norms' statistics come from their producers and the
    expand norm is applied by the depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 24, 1, bias=False)
        self.n1, self.n2, self.n3 = nn.GroupNorm(4, 24), nn.GroupNorm(4, 24), nn.GroupNorm(2, 8)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.project = nn.Conv2d(24, 8, 1, bias=False)

    def forward(self, x):
        y = nn.functional.relu6(self.n1(self.expand(x)))
        y = nn.functional.relu6(self.n2(self.dw(y)))
        return x + self.n3(self.project(y))


def test_chw_stretch_fuses_norm_statistics_and_matches_torch():
    from tvm.runtime.vm import VirtualMachine

    from tvm_build import compile as tc
    from tvm_build import cpu_executor, export, sparse
    from tvm_build import sparse_chw as sc
    from tvm_build.graph import export_order, param_arrays

    torch.manual_seed(0)
    net = InvertedResidual().eval()
    with torch.no_grad():
        for conv in (net.expand, net.project):
            conv.weight[torch.rand_like(conv.weight) < 0.8] = 0
        for norm in (net.n1, net.n2, net.n3):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 8, 16, 16)
    mod, ep = export.to_relax(net, (x,))
    lifted = export.ChannelsLast(mod, export_order(ep))
    arrays = lifted.weights({n: param_arrays(net)[n] for n in export_order(ep)})
    found = sparse.candidates(lifted.main, list(arrays))
    tried = {n: (c, sparse.to_csr(arrays[n]), 0.2) for n, c in found.items()}
    chw = {n: (c, int(np.count_nonzero(arrays[n]))) for n, c in found.items()}
    new = sc.rewrite(lifted.main, list(arrays), {}, chw, 1)
    weights, _ = sparse.Chooser._csr_arrays(arrays, lifted.from_torch, chw, tried)
    target = host_target()
    dev = tvm.cpu()
    from tvm import relax

    # the VM's bytecode: the kernels are what is checked here (its compiled mode's C build costs seconds)
    got = VirtualMachine(relax.build(new, target=target, tir_pipeline=tc.tir_pipeline()), dev)["main"](
        tvm.runtime.tensor(x.numpy(), dev), *[tvm.runtime.tensor(a, dev) for a in weights.values()]).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-4)
    kernels = [c.kernel for c in cpu_executor.plan_module(cpu_executor.kernel_module(tc.fuse_kernels(new, target)))
               .calls]
    # three norms, two kernels: the expand norm is the depthwise conv's, the others read their producers' statistics
    assert sum("group_norm" in k for k in kernels) == 2 and all(k.endswith("_stats") for k in kernels
                                                                  if "group_norm" in k)
    assert any("depthwise_chw_16x16_24_s1_normeds_stats" in k for k in kernels)
