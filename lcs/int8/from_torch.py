"""A plain torch network (e.g. `lcs.subspace.export.materialize` of one level) as a float `Graph`:
BatchNorm folded into the conv before it, ZeroPad2d into the next conv's padding, ReLU and residual adds
fused into the conv that produces them. Traced with torch.fx; anything else is refused with the node's name.

GroupNorm (and so instance/layer norm, which the models build as GroupNorm) normalises with statistics of the
sample itself: it cannot fold into the weights and runs as its own integer op (`graph.GroupNorm`), with the
ReLU after it fused."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
from torch import nn

from lcs.errors import LcsError
from lcs.int8.graph import Add, Conv, Dense, Graph, GroupNorm, Pool, Tensor, conv_out_hw


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:  # a level's QuantizeInput stays one node
        return type(m).__name__ == "QuantizeInput" or super().is_leaf_module(m, name)


def from_torch(net: nn.Module, input_shape: tuple[int, int, int], *, adds: bool = False) -> Graph:
    """`input_shape` is (C, H, W) as torch sees it; the graph is HWC. `adds`: an add that no conv can take as its
    residual becomes an `Add` op (the CPU kernels run it; the microcontroller kernels do not)."""
    net = net.eval()
    gm = torch.fx.GraphModule(net, _Tracer().trace(net))
    mods = dict(gm.named_modules())
    c, h, w = input_shape
    tensors: dict[str, Tensor] = {"input": Tensor("input", (h, w, c))}
    ops: list = []
    where: dict[str, str] = {}  # fx node -> graph tensor it equals
    producer: dict[str, object] = {}  # graph tensor -> op that writes it (for fusion)
    pending_pad: dict[str, tuple[str, tuple[int, int, int, int]]] = {}  # fx node -> (tensor, pads)
    users = {n.name: len(n.users) for n in gm.graph.nodes}
    out_name = None

    def fused_target(node, kinds=(Conv,)) -> Conv:
        src = where[node.args[0].name]
        op = producer.get(src)
        if not isinstance(op, kinds) or users[node.args[0].name] != 1:
            raise LcsError(f"int8: {node.name} follows {src}, which is not a conv it can fold into")
        return op

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            where[node.name] = "input"
        elif node.op == "output":
            out_name = where[node.args[0].name]
        elif node.op == "call_module":
            mod = mods[node.target]
            if isinstance(mod, nn.ZeroPad2d):
                le, r, t, b = mod.padding
                pending_pad[node.name] = (where[node.args[0].name], (t, b, le, r))
                continue
            if isinstance(mod, nn.Conv2d):
                arg = node.args[0].name
                src, extra = pending_pad.get(arg, (where.get(arg), (0, 0, 0, 0)))
                ih, iw, ic = tensors[src].shape
                depthwise = mod.groups > 1
                if depthwise and not (mod.groups == mod.in_channels == mod.out_channels):
                    raise LcsError(f"int8: grouped conv {node.target} is neither dense nor depthwise")
                if mod.dilation != (1, 1) or mod.stride[0] != mod.stride[1] or isinstance(mod.padding, str):
                    raise LcsError(f"int8: conv {node.target} has a dilation, padding or stride it cannot run")
                ph, pw = mod.padding
                pads = (extra[0] + ph, extra[1] + ph, extra[2] + pw, extra[3] + pw)
                weight = _np(mod.weight).transpose(0, 2, 3, 1)  # OIHW -> OHWI
                bias = _np(mod.bias) if mod.bias is not None else np.zeros(mod.out_channels)
                op = Conv(src, node.name, weight, bias, mod.stride[0], pads, depthwise)
                oh, ow = conv_out_hw(ih, iw, op)
                tensors[node.name] = Tensor(node.name, (oh, ow, mod.out_channels))
            elif isinstance(mod, nn.BatchNorm2d):
                op = fused_target(node)
                g = _np(mod.weight) if mod.weight is not None else 1.0
                b = _np(mod.bias) if mod.bias is not None else 0.0
                k = g / np.sqrt(_np(mod.running_var) + mod.eps)
                op.weight = op.weight * k.reshape(-1, 1, 1, 1)
                op.bias = (op.bias - _np(mod.running_mean)) * k + b
                where[node.name] = op.out
                continue
            elif isinstance(mod, nn.GroupNorm):
                if not mod.affine:
                    raise LcsError(f"int8: GroupNorm {node.target} without affine parameters")
                src = where[node.args[0].name]
                if tensors[src].shape[-1] != mod.num_channels or len(tensors[src].shape) != 3:
                    raise LcsError(f"int8: GroupNorm {node.target} does not match its input's channels")
                op = GroupNorm(src, node.name, mod.num_groups, _np(mod.weight), _np(mod.bias), float(mod.eps))
                tensors[node.name] = Tensor(node.name, tensors[src].shape)
            elif isinstance(mod, (nn.ReLU, nn.ReLU6)):
                target = fused_target(node, (Conv, GroupNorm, Add))
                target.relu = True
                if isinstance(mod, nn.ReLU6):  # calibration's float forward caps at 6, so the scale does too
                    target.cap = 6.0
                where[node.name] = where[node.args[0].name]
                continue
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                if mod.output_size not in (1, (1, 1)):
                    raise LcsError(f"int8: {node.target} pools to {mod.output_size}, only a global pool runs")
                src = where[node.args[0].name]
                op = Pool(src, node.name)
                tensors[node.name] = Tensor(node.name, (tensors[src].shape[-1],))
            elif isinstance(mod, nn.Linear):
                src = where[node.args[0].name]
                bias = _np(mod.bias) if mod.bias is not None else np.zeros(mod.out_features)
                op = Dense(src, node.name, _np(mod.weight), bias)
                tensors[node.name] = Tensor(node.name, (mod.out_features,))
            elif type(mod).__name__ == "QuantizeInput":
                # a quantization level's b-bit activation grid: the GroupNorm before it writes on that grid where
                # int8 holds it (graph.quantize); otherwise int8 is the finer grid
                src = where[node.args[0].name]
                if isinstance(producer.get(src), GroupNorm):
                    producer[src].grid = (mod.scale, int(mod.qmin - mod.zero), int(mod.qmax - mod.zero))
                where[node.name] = src
                continue
            elif isinstance(mod, (nn.Identity, nn.Dropout, nn.Flatten)):
                where[node.name] = where[node.args[0].name]
                continue
            else:
                raise LcsError(f"int8: layer {node.target} ({type(mod).__name__}) has no integer kernel")
            ops.append(op)
            producer[op.out] = op
            where[node.name] = op.out
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            if fn in (operator.add, torch.add, "add"):
                a, b = (where[x.name] for x in node.args[:2])
                # the later conv takes the other operand as its residual
                first, second = sorted((a, b), key=lambda t: [o.out for o in ops].index(t) if t in producer else -1)
                op = producer.get(second)
                second_node = node.args[[a, b].index(second)]
                if tensors[first].shape != tensors[second].shape:
                    raise LcsError(f"int8: the add {node.name} joins tensors of different shapes")
                if not isinstance(op, Conv) or op.relu or op.add is not None or users[second_node.name] != 1:
                    if not adds:
                        raise LcsError(f"int8: the add {node.name} does not follow a conv it can fuse into")
                    op = Add(second, first, node.name)
                    tensors[node.name] = Tensor(node.name, tensors[second].shape)
                    ops.append(op)
                    producer[op.out] = op
                    where[node.name] = op.out
                    continue
                op.add = first
                where[node.name] = second
            elif fn in (torch.relu, torch.nn.functional.relu, "relu"):
                fused_target(node, (Conv, GroupNorm, Add)).relu = True
                where[node.name] = where[node.args[0].name]
            elif fn is torch.nn.functional.adaptive_avg_pool2d:  # torchvision's MobileNetV2
                size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
                if size not in (1, (1, 1), [1, 1]):
                    raise LcsError(f"int8: {node.name} pools to {size}, only a global pool runs")
                src = where[node.args[0].name]
                op = Pool(src, node.name)
                tensors[node.name] = Tensor(node.name, (tensors[src].shape[-1],))
                ops.append(op)
                producer[op.out] = op
                where[node.name] = op.out
            elif fn in (torch.flatten, "flatten", "view", "reshape"):
                where[node.name] = where[node.args[0].name]
            else:
                raise LcsError(f"int8: operation {node.name} ({fn}) has no integer kernel")
        else:
            raise LcsError(f"int8: cannot convert node {node.name} ({node.op})")
    used = {op.inp for op in ops} | {op.add for op in ops if isinstance(op, (Conv, Add)) and op.add} | {out_name, "input"}
    return Graph({k: v for k, v in tensors.items() if k in used or k in {o.out for o in ops}}, ops, "input", out_name)
