"""MLPerf Tiny models, the numpy integer reference (lcs.int8) and the int8 C kernels against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcs.config import ModelConfig
from lcs.errors import LcsError
from lcs.int8 import emit_c
from lcs.int8 import firmware as fw
from lcs.int8.from_torch import from_torch
from lcs.int8.graph import (Conv, Graph, GroupNorm, Requant, Tensor, group_norm_int, quantize, requant, run_float,
                            run_int)
from lcs.models import build_model

# (model, torch input shape, classes, folded params, MACs). ResNet-8's are MLPerf Tiny's published 77,706 params
# (BN folded) and 12,501,632 MACs; DS-CNN-S 2.66 M MACs (24,908 params as Keras counts them with BN = 22,604
# folded + 9 x 256 BN values); MobileNetV1-0.25 at 96x96: 7.49 M MACs, 210,850 params folded.
MLPERF = [
    ("resnet8", (3, 32, 32), 10, 77_706, 12_501_632),
    ("ds-cnn", (1, 49, 10), 12, 22_604, 2_656_768),
    ("mobilenet-v1-0.25", (3, 96, 96), 2, 210_850, 7_489_664),
]


def _net(name, shape, classes, norm="batch", seed=0):
    torch.manual_seed(seed)
    net = build_model(ModelConfig(name=name, in_channels=shape[0], image_size=shape[1], num_classes=classes, norm=norm))
    for m in net.modules():  # a trained-looking norm, so folding is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy().astype(np.float64)


@pytest.mark.parametrize("name,shape,classes,params,macs", MLPERF)
def test_mlperf_tiny_models_have_the_published_size_and_fold_exactly(name, shape, classes, params, macs):
    net = _net(name, shape, classes)
    graph = from_torch(net, shape)
    assert graph.params() == params and graph.macs() == macs
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(run_float(graph, _nhwc(x)), ref, atol=1e-4, rtol=1e-4)
    # the project's default batch-independent norm trains too
    gn = build_model(ModelConfig(name=name, in_channels=shape[0], image_size=shape[1], num_classes=classes))
    assert gn(x).shape == (2, classes)


@pytest.mark.slow  # trains one epoch per model
@pytest.mark.parametrize("name,size,mode", [("resnet8", 32, "RGB"), ("ds-cnn", 12, "L"),
                                            ("mobilenet-v1-0.25", 32, "RGB")])
def test_mlperf_tiny_models_train_on_an_image_folder(tmp_path, name, size, mode):
    from PIL import Image

    from lcs import checkpoint, commands

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("a", "b")):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(6):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            pixels = (rng.random(shape) * 120 + 120 * k).astype(np.uint8)
            Image.fromarray(pixels, mode).save(tmp_path / "img" / cls / f"{i}.png")
    config, data = commands.train_config(data_source=f"folder:{tmp_path / 'img'}", model_name=name, shape="point",
                                         epochs=1, batch_size=4)
    commands.train(config, data, tmp_path / "m.safetensors", progress=False)
    ck = checkpoint.load(tmp_path / "m.safetensors")
    assert ck.config.model.name == name
    assert ck.model(torch.zeros(1, 3 if mode == "RGB" else 1, size, size)).shape == (1, 2)


def _gn_net(seed=0):
    """The small CNN with its default GroupNorm, affine parameters made non-trivial (negative and zero gammas)."""
    torch.manual_seed(seed)
    net = build_model(ModelConfig(in_channels=1, image_size=12, width=8)).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.weight.data.uniform_(-1.5, 1.5)
            m.weight.data[0] = 0.0
            m.bias.data.uniform_(-0.3, 0.3)
    return net


def test_integer_group_norm_is_float_group_norm_to_half_a_step():
    """The integer GroupNorm (graph.group_norm_int) against float GroupNorm of the same int8 input: within half an
    output step plus the input's own rounding; a constant group (variance 0: only E) gives beta."""
    net = _gn_net()
    graph = from_torch(net, (1, 12, 12))
    assert sum(isinstance(op, GroupNorm) and op.relu for op in graph.ops) == 4
    x = np.random.default_rng(0).standard_normal((6, 12, 12, 1))
    q = quantize(graph, x)
    vals = run_int(q, q.quantize_input(x), keep=True)
    for op in (o for o in q.ops if isinstance(o, GroupNorm)):
        h = vals[op.inp].astype(np.float64)
        h[0, ..., : h.shape[-1] // op.groups] = 5  # one constant group
        got = group_norm_int(h.astype(np.int64), op)
        s_in, s_out = q.tensors[op.inp].scale, q.tensors[op.out].scale
        g = (h * s_in).reshape(h.shape[:3] + (op.groups, -1))
        mu, var = g.mean(axis=(1, 2, 4), keepdims=True), g.var(axis=(1, 2, 4), keepdims=True)
        ref = ((g - mu) / np.sqrt(var + op.eps)).reshape(h.shape) * op.gamma + op.beta
        ref = np.clip(np.maximum(ref, 0) / s_out, 0, 127)
        assert np.abs(got - ref).max() <= 0.5 + 1e-3, op.out
        cg = h.shape[-1] // op.groups
        assert np.array_equal(got[0, ..., :cg], np.broadcast_to(np.clip((op.b[:cg] + (1 << 15)) >> 16, 0, 127),
                                                                 got[0, ..., :cg].shape))
    # torch agrees at the network's output (within int8 resolution)
    with torch.no_grad():
        ref = net(torch.from_numpy(x).permute(0, 3, 1, 2).float()).numpy()
    assert np.abs(run_float(graph, x) - ref).max() < 1e-4


def test_integer_group_norm_in_c_equals_the_reference(tmp_path):
    net = _gn_net(1)
    x = np.random.default_rng(1).standard_normal((4, 12, 12, 1))
    float_graph = from_torch(net, (1, 12, 12))
    norms = [op for op in float_graph.ops if isinstance(op, GroupNorm)]
    norms[1].grid = (0.05, 0, 15)  # a 4-bit quantization level's activation grid on one norm's output
    graph = quantize(float_graph, x)
    assert graph.tensors[norms[1].out].scale == 0.05
    xq = graph.quantize_input(x[:1])
    ref = run_int(graph, xq, keep=True)
    assert ref[norms[1].out].max() == 15
    src = tmp_path / "net.c"
    src.write_text(emit_c.emit(graph, xq[0]))
    assert src.read_text().count("q8_groupnorm(") == 4
    _check_bit_exact(graph, ref, fw.run_host(fw.build(src, tmp_path / "net", None)))


@pytest.mark.qemu
def test_integer_group_norm_under_qemu_m4_equals_the_reference(tmp_path):
    net = _gn_net(2)
    x = np.random.default_rng(2).standard_normal((4, 12, 12, 1))
    graph = quantize(from_torch(net, (1, 12, 12)), x)
    xq = graph.quantize_input(x[:1])
    ref = run_int(graph, xq, keep=True)
    src = tmp_path / "net.c"
    src.write_text(emit_c.emit(graph, xq[0]))
    _check_bit_exact(graph, ref, fw.run_qemu(fw.build(src, tmp_path / "net.elf", "mps2-an386"), "mps2-an386"))


def test_a_residual_add_after_group_norm_is_refused_in_one_line():
    net = build_model(ModelConfig(name="resnet8", in_channels=3, image_size=32)).eval()
    with pytest.raises(LcsError, match="does not follow a conv it can fuse into"):
        from_torch(net, (3, 32, 32))


def test_requantization_hand_cases():
    assert (Requant.of(0.5).m, Requant.of(0.5).l, Requant.of(0.5).n) == (1 << 30, 1, 0)
    half = Requant.of(0.5)
    # round half up: 1.5 -> 2, -1.5 -> -1
    assert requant(np.array([3, -3, 4]), half.m, half.l, half.n).tolist() == [2, -1, 2]
    q = Requant.of(0.25)
    assert requant(np.array([10]), q.m, q.l, q.n).tolist() == [3]  # 2.5 -> 3
    q = Requant.of(1 / 64)  # n = 4: high multiply to 25, then (25 + 8) >> 4
    assert (q.l, q.n) == (0, 4) and requant(np.array([100]), q.m, q.l, q.n).tolist() == [2]
    for r in (1e-4, 0.0123, 0.37, 0.99, 1.7, 40.0):
        rq = Requant.of(r)
        assert 1 << 30 <= rq.m < 1 << 31 and rq.value == pytest.approx(r, rel=1e-9)
        x = np.arange(-2000, 2000)
        # two roundings: the high multiply's (half a unit of 2^-n) and the shift's
        err = np.abs(requant(x, rq.m, rq.l, rq.n) - x * r).max()
        assert err <= 0.5 + (2.0 ** -(rq.n + 1) if rq.n else 0) + 1e-6, (r, err)


def _naive_conv(x, w, b, stride, pads, depthwise):
    t, bo, le, r = pads
    xp = np.pad(x, ((t, bo), (le, r), (0, 0)))
    o_n, kh, kw, _ = w.shape
    oh, ow = (xp.shape[0] - kh) // stride + 1, (xp.shape[1] - kw) // stride + 1
    acc = np.zeros((oh, ow, o_n), np.int64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[i * stride:i * stride + kh, j * stride:j * stride + kw].astype(np.int64)
            for o in range(o_n):
                acc[i, j, o] = (patch[..., o] * w[o, ..., 0]).sum() if depthwise else (patch * w[o]).sum()
    return acc + b


@pytest.mark.parametrize("depthwise,stride,pads,relu", [(False, 1, (1, 1, 1, 1), True), (False, 2, (4, 5, 1, 1), False),
                                                        (True, 2, (1, 1, 1, 1), True), (True, 1, (1, 1, 1, 1), False)])
def test_integer_conv_is_the_documented_arithmetic(depthwise, stride, pads, relu):
    """run_int against plain Python integers: accumulate, high multiply with rounding, rounding shift, residual,
    clamp. Stride-1 cases add the input itself as the residual (an identity 1x1 depthwise conv copies it)."""
    rng = np.random.default_rng(1)
    c = 4
    x = rng.integers(-128, 128, (7, 6, c))
    w = rng.integers(-127, 128, (c, 3, 3, 1 if depthwise else c)).astype(np.int8)
    b = rng.integers(-3000, 3000, c).astype(np.int32)
    rqs = [Requant.of(r) for r in rng.uniform(0.001, 0.02, c)]
    residual = stride == 1
    one = Requant.of(1.0)
    assert (one.l, one.n) == (2, 0)  # rq(x) = ((4x) * 2^30 + 2^31) >> 32 = x
    copy = Conv("x", "s", np.ones((c, 1, 1, 1), np.int8), np.zeros(c, np.int32), 1, (0, 0, 0, 0), True, rq=[one] * c)
    add = Requant.of(0.7)
    conv = Conv("x", "y", w, b, stride, pads, depthwise, relu=relu, add="s" if residual else None, rq=rqs,
                rq_add=add if residual else None)
    acc = _naive_conv(x, w, b, stride, pads, depthwise)
    tensors = {n: Tensor(n, x.shape, 1.0) for n in ("x", "s")} | {"y": Tensor("y", acc.shape, 1.0)}
    got = run_int(Graph(tensors, [copy, conv], "x", "y", quantized=True), x[None])[0]
    expect = np.zeros_like(acc)
    for o in range(c):
        for i, j in np.ndindex(acc.shape[:2]):
            t = (int(acc[i, j, o]) * rqs[o].m + (1 << 31)) >> 32
            y = (t + ((1 << rqs[o].n) >> 1)) >> rqs[o].n
            if residual:
                y += ((int(x[i, j, o]) << add.l) * add.m + (1 << 31)) >> 32 >> 0
            expect[i, j, o] = min(127, max(0 if relu else -128, y))
    assert np.array_equal(got, expect)


@pytest.mark.slow
def test_int8_reference_agrees_with_fp32_torch(digits):
    """A trained small CNN (batch norm, folded): int8 accuracy within 2 points of fp32 on the digits test split."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(in_channels=1, image_size=8, norm="batch"))
    xs = torch.stack([digits.train[i][0] for i in range(len(digits.train))])
    ys = torch.tensor([int(digits.train[i][1]) for i in range(len(digits.train))])
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(4):
        for k in range(0, len(xs), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xs[k:k + 64]), ys[k:k + 64]).backward()
            opt.step()
    net.eval()
    xt = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    yt = np.array([int(digits.test[i][1]) for i in range(len(digits.test))])
    with torch.no_grad():
        acc_fp = (net(xt).argmax(1).numpy() == yt).mean()
    graph = quantize(from_torch(net, (1, 8, 8)), _nhwc(xs[:256]))
    logits = run_int(graph, graph.quantize_input(_nhwc(xt)))
    acc_int = (logits.argmax(1) == yt).mean()
    assert acc_fp > 0.8
    assert abs(acc_int - acc_fp) <= 0.02, (acc_int, acc_fp)


def _quantized(name, shape, classes, seed=0):
    net = _net(name, shape, classes, seed=seed)
    x = np.random.default_rng(seed).standard_normal((8,) + (shape[1], shape[2], shape[0]))
    graph = quantize(from_torch(net, shape), x)
    xq = graph.quantize_input(x[:1])
    return graph, xq, run_int(graph, xq, keep=True)


def _check_bit_exact(graph, ref, run):
    assert [name for name, _, _ in run.layers] == [f"{op.out}:" + name.split(":")[1] for op, (name, _, _) in
                                                   zip(graph.ops, run.layers)]
    for op, (name, _, h) in zip(graph.ops, run.layers):
        assert h == fw.fnv1a(ref[op.out].astype(np.int8).tobytes()), f"layer {name} differs from the reference"
    assert run.output == ref[graph.output].astype(np.int8).tobytes()


@pytest.mark.parametrize("name,shape,classes", [(m[0], m[1], m[2]) for m in MLPERF])
def test_c_kernels_on_the_host_equal_the_reference(tmp_path, name, shape, classes):
    graph, xq, ref = _quantized(name, shape, classes)
    src = tmp_path / "net.c"
    src.write_text(emit_c.emit(graph, xq[0]))
    run = fw.run_host(fw.build(src, tmp_path / "net", None))
    _check_bit_exact(graph, ref, run)


@pytest.mark.qemu
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385", "mps2-an500"])
@pytest.mark.parametrize("name,shape,classes", [(m[0], m[1], m[2]) for m in MLPERF[:2]])
def test_c_kernels_under_qemu_equal_the_reference(tmp_path, board, name, shape, classes):
    graph, xq, ref = _quantized(name, shape, classes, seed=3)
    src = tmp_path / "net.c"
    src.write_text(emit_c.emit(graph, xq[0]))
    run = fw.run_qemu(fw.build(src, tmp_path / "net.elf", board), board)
    _check_bit_exact(graph, ref, run)
    assert run.total_ticks > 0


def _pruned(graph, sparsity):
    from dataclasses import replace

    ops = []
    for i, op in enumerate(graph.ops):
        if isinstance(op, Conv) and not op.depthwise and i > 0:
            w = op.weight.copy()
            w.reshape(-1)[np.argsort(np.abs(w.astype(int)).ravel(), kind="stable")[:int(sparsity * w.size)]] = 0
            op = replace(op, weight=w)
        ops.append(op)
    return replace(graph, ops=ops)


def test_sparse_entries_address_the_int8_window():
    w = np.zeros((2, 1, 8), np.int8)
    w[0, 0, [1, 2, 6]] = [5, -3, 7]
    w[1, 0, 4] = -128 + 1
    entries, starts = emit_c.sparse_entries(w)
    assert starts.tolist() == [0, 3, 4]
    decoded = [(int(e) >> 16, (int(e) & 0xFFFF) - ((int(e) & 0x8000) << 1)) for e in entries]
    assert decoded == [(1, 5), (2, -3), (6, 7), (4, -127)]  # (index in the window, weight), the same on every core


@pytest.mark.parametrize("board", [None, pytest.param("mps2-an386", marks=pytest.mark.qemu),
                                   pytest.param("mps2-an385", marks=pytest.mark.qemu),
                                   pytest.param("mps2-an500", marks=pytest.mark.qemu)])
def test_sparse_kernel_equals_the_reference(tmp_path, board):
    graph, xq, _ = _quantized("resnet8", (3, 32, 32), 10, seed=5)
    level = _pruned(graph, 0.8)
    level.ops[1].weight[3] = 0  # an output channel with no nonzeros: bias only
    counts = {int(np.count_nonzero(w)) % 2 for w in level.ops[2].weight}
    assert counts == {0, 1}  # the 8-pixel loop's odd first step and its pairs both run
    ref = run_int(level, xq, keep=True)
    src = tmp_path / "net.c"
    src.write_text(emit_c.emit(level, xq[0], sparse_from=0.5))
    assert src.read_text().count("sparse-conv") == 8  # every conv but the stem
    exe = fw.build(src, tmp_path / "net", board)
    run = fw.run_host(exe) if board is None else fw.run_qemu(exe, board)
    _check_bit_exact(level, ref, run)


@pytest.mark.parametrize("board", [None, pytest.param("mps2-an386", marks=pytest.mark.qemu)])
def test_sparse_kernel_on_rows_of_5_equals_the_reference(tmp_path, board):
    """DS-CNN's 25x5 maps: rows not a multiple of 8 take the 4-pixel loop (4 pixels, then a tail of 1)."""
    graph, xq, _ = _quantized("ds-cnn", (1, 49, 10), 12, seed=6)
    level = _pruned(graph, 0.8)
    ref = run_int(level, xq, keep=True)
    src = tmp_path / "net.c"
    src.write_text(emit_c.emit(level, xq[0], sparse_from=0.5))
    assert src.read_text().count("sparse-conv") == 4  # the pointwise convs
    exe = fw.build(src, tmp_path / "net", board)
    _check_bit_exact(level, ref, fw.run_host(exe) if board is None else fw.run_qemu(exe, board))


def test_arena_plan_keeps_live_tensors_apart():
    graph, _, _ = _quantized("resnet8", (3, 32, 32), 10)
    offsets, size = emit_c.plan_arena(graph)
    live = {}
    for i, op in enumerate(graph.ops):
        live.setdefault(op.inp, [i, i])[1] = i
        live.setdefault(op.out, [i, i])
        if getattr(op, "add", None):
            live[op.add][1] = i
    live[graph.input][0] = -1
    names = list(live)
    for a in names:
        for b in names:
            if a < b and not (live[a][1] < live[b][0] or live[b][1] < live[a][0]):
                sa, sb = (int(np.prod(graph.tensors[n].shape)) for n in (a, b))
                assert offsets[a] + sa <= offsets[b] or offsets[b] + sb <= offsets[a], (a, b)
    assert size <= 48 * 1024  # ResNet-8's activations fit the arena CMSIS-NN needs
    store, n_weights = emit_c.store_bytes(graph)
    assert n_weights == 77_706 - 346 and store / n_weights <= 1.1  # int8 + per-channel bias and requantization


@pytest.mark.slow
def test_a_trained_unstructured_level_becomes_a_sparse_int8_graph(tmp_path, digits):
    from lcs import checkpoint, commands
    from lcs.int8.level import int8_accuracy, int8_level

    config, data = commands.train_config(data_source="digits", family="unstructured", shape="point", norm="batch",
                                         epochs=3)
    with pytest.warns(UserWarning):
        commands.train(config, data, tmp_path / "u.safetensors", progress=False)
    with pytest.warns(UserWarning):  # BatchNorm (the int8 path folds it) warns on every load
        ck = checkpoint.load(tmp_path / "u.safetensors")
    calib = torch.stack([digits.train[i][0] for i in range(256)])
    xt = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    yt = np.array([int(digits.test[i][1]) for i in range(len(digits.test))])
    for alpha in (1.0, 0.5, 0.1):  # 0.1: a short BatchNorm run is poor there (shared statistics); agreement still
        graph = int8_level(ck.model, alpha, calib)
        convs = [op for op in graph.ops if isinstance(op, Conv)][1:]  # the stem stays dense
        zeros = sum(int((op.weight == 0).sum()) for op in convs) / sum(op.weight.size for op in convs)
        assert zeros >= (0.85 if alpha == 0.1 else 0.0)
        ck.model.set_alpha(alpha)
        ck.model.eval()
        with torch.no_grad():
            acc_fp = float((ck.model(xt).argmax(1).numpy() == yt).mean())
        acc_int = int8_accuracy(graph, xt, yt)
        assert abs(acc_int - acc_fp) <= 0.03, (alpha, acc_int, acc_fp)
        assert acc_fp > (0.5 if alpha >= 0.5 else 0.0)


def test_derived_levels_shift_the_stored_numbers_and_threshold_the_codes():
    """lcs/int8/derived.py: a level's requantization is the stored multiplier with its shift moved (the value
    Requant.of gives for the factor x 2^d), and per channel the threshold keeps the count of codes nearest the
    level's own."""
    from lcs.int8.derived import choose_thresholds, shift_bias, shift_rq

    for r in (0.37, 1.9e-3, 0.75, 3.2):
        for d in (-2, 0, 1, 3):
            assert shift_rq(Requant.of(r), d) == Requant.of(r * 2.0 ** d)
    assert shift_bias(np.array([5, -5, 6, -6]), -1).tolist() == [3, -2, 3, -3]  # (b + 1) >> 1: half up
    assert shift_bias(np.array([5, -5]), 2).tolist() == [20, -20]
    codes = np.array([[1, -2, 3, -4, 5, -6], [0, 0, 7, 7, -7, 1]], np.int8)
    # |code| > 4 keeps 5 and -6; in channel 1 no threshold keeps exactly 1: 0 (t = 7) is nearer than 3 (t = 1..6)
    assert choose_thresholds(codes, np.array([2, 1])).tolist() == [4, 7]
    assert choose_thresholds(codes, np.array([6, 3])).tolist() == [0, 1]  # ties: the smaller t


def test_quantization_levels_regrid_the_stored_codes():
    """lcs/int8/derived.py, the quantization family: R = round(65536 K P / D), codes (c R + 2^15) >> 16, the
    requantization times 65536 / R to the multiplier's last bit; and regridding the stored 8-bit codes lands on the
    trained 4-bit grid's integers (per channel, after the per-channel int8 codes' own rounding) but for a rare one."""
    from lcs.int8.derived import regrid_bias, regrid_codes, regrid_ratio, regrid_rq
    from lcs.int8.graph import _weights_int8

    assert regrid_ratio(np.array([255, 1, 0]), 127, 127 * 255).tolist() == [65536, 257, 1]  # 257.003; never 0
    assert regrid_ratio(np.array([1]), 7, 127 * 255).tolist() == [14]  # 14.17
    assert regrid_codes(np.array([[1, -1, 3, -3, 127]]), np.array([32768])).tolist() == [[1, 0, 2, -1, 64]]  # half up
    assert regrid_codes(np.array([[127, -127]]), np.array([65536])).tolist() == [[127, -127]]
    assert regrid_bias(np.array([3, -3, 1 << 29]), np.array([32768] * 3)).tolist() == [2, -1, 1 << 28]
    for r in (0.37, 1.9e-3, 3.2):
        assert regrid_rq(Requant.of(r), 65536) == Requant.of(r)
        for ratio in (14, 1000, 32768, 65535):
            got, want = regrid_rq(Requant.of(r), ratio), Requant.of(r * 65536 / ratio)
            assert got.l - got.n == want.l - want.n and abs(got.m - want.m) <= 1
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 72)) * rng.uniform(0.2, 1, (16, 1))  # one tensor, channels of different spread
    lo, hi = w.min(), w.max()
    s8, s4 = (hi - lo) / 255, (hi - lo) / 15
    k8 = np.clip(np.rint(w / s8) + np.clip(-128 - np.rint(lo / s8), -128, 127), -128, 127) \
        - np.clip(-128 - np.rint(lo / s8), -128, 127)  # the 8-bit level's integers (zero point removed)
    z4 = np.clip(-8 - np.rint(lo / s4), -8, 7)
    k4 = np.clip(np.rint(w / s4) + z4, -8, 7) - z4  # the trained 4-bit level's integers
    codes, _ = _weights_int8(k8 * s8)  # what the store keeps: per-channel int8 codes of the 8-bit weights
    got = regrid_codes(codes, regrid_ratio(np.abs(k8).max(axis=1), 15, 127 * 255))
    assert np.abs(got - k4).max() <= 1 and np.mean(got != k4) < 0.02
