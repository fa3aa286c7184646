"""torch -> Relax: every level's network exported once per distinct structure (`export_levels`), `torch.export` +
Relax import (`to_relax`), and the channels-last rewrite of per-level modules (weights stored in the layout the kernels
read)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from lcs import artifact as art
from lcs.errors import LcsError
from lcs.runtime import filtered_tvm_logs
from tvm_build.target import host_target

def to_relax(net, args):
    """torch.export a plain network and import it into Relax: main(*args, *parameters)."""
    import torch
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad(), warnings.catch_warnings():
        # alpha-input layers receive alpha as a plain attribute set in forward (never a buffer: it is an input)
        warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
        ep = torch.export.export(net, tuple(args))
    mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod, _ = detach_params(mod)
    return mod, ep


class ChannelsLast:
    """A per-level module rewritten to run its convolutions channels-last, with the weight-only work done at build time.

    NHWC activations with HWIO kernels put output channels innermost: every level width of the small CNN (4..64
    channels) fills whole vectors, and MetaSchedule finds fast kernels in far fewer trials (small CNN, 1 thread, 160
    trials: 0.057 ms vs 0.086 ms NCHW). Relax's ConvertLayout inserts the kernel transposes into the graph and
    LiftTransformParams moves every computation that depends on weights alone (those transposes, the classifier's)
    into a separate function, which the build runs once per level: the artifact stores the weights in the layout the
    kernels read, and no call pays for a transpose."""

    def __init__(self, mod, names: list[str]) -> None:
        import tvm
        from tvm import relax

        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        mod = _unit_permutes_as_reshapes(_elementwise_without_permutes(mod))
        mod = relax.transform.LiftTransformParams()(mod)
        if not any(gv.name_hint == "main_transform_params" for gv in mod.get_global_vars()):
            raise LcsError("TVM's LiftTransformParams made no weight transform; this TVM is not the pinned 0.27")
        transform = mod["main_transform_params"]
        self.main = tvm.IRModule({"main": mod["main"]})
        self.names, self.from_torch = _lifted_names(transform, names)
        self._source_names = list(names)
        with filtered_tvm_logs():
            executable = relax.build(tvm.IRModule({"transform": transform.with_attr("global_symbol", "transform")}),
                                     target=host_target())
        self._transform = relax.VirtualMachine(executable, tvm.cpu())["transform"]  # run once per level

    def weights(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One level's weights (torch names and layouts, export order) as the rewritten module takes them."""
        import tvm

        if list(arrays) != self._source_names:
            raise LcsError(f"weights do not match the exported parameters ({list(arrays)[:3]}... vs "
                           f"{self._source_names[:3]}...)")
        outputs = self._transform([tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu()) for a in arrays.values()])
        return {name: out.numpy() for name, out in zip(self.names, outputs)}


def _unit_permutes_as_reshapes(mod):
    """Rewrite transposes that only move axes of extent 1 (NHWC (1,1,1,C) -> NCHW (1,C,1,1) before a flatten, which
    ConvertLayout leaves at the classifier) as reshapes: Relax runs a reshape as a view, with no kernel launch or
    allocation (a transpose costs one of each: one of the eleven kernels of the width-0.25 small CNN)."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            op = getattr(call.op, "name", None)
            if op == "relax.reshape":  # a reshape of a reshape (the rewritten transpose's consumer) is one reshape
                source = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
                if isinstance(source, relax.Call) and getattr(source.op, "name", None) == "relax.reshape":
                    return relax.op.reshape(source.args[0], call.args[1])
                return call
            shape = getattr(call.args[0].ty, "shape", None) if call.args else None
            if op != "relax.permute_dims" or not isinstance(shape, relax.ShapeExpr):
                return call
            dims = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in shape.values]
            axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(len(dims)))[::-1]
            moved = [a for a in axes if dims[a] != 1]
            if None in dims or moved != sorted(moved):
                return call
            return relax.op.reshape(call.args[0], [dims[a] for a in axes])

    out = tvm.IRModule(attrs=mod.attrs)
    for gv, func in mod.functions.items():
        out[gv] = Rewriter(mod).visit_expr(func) if isinstance(func, relax.Function) else func
    return relax.transform.DeadCodeElimination()(out)  # the reshapes now unused


# ops that act on each element alone: moving one across a transpose does not change the result
ELEMENTWISE = {"relax.clip", "relax.nn.relu", "relax.nn.silu", "relax.nn.gelu", "relax.sigmoid", "relax.tanh"}


def _elementwise_without_permutes(mod):
    """Rewrite transpose -> elementwise op -> inverse transpose as the op alone. ConvertLayout does not know
    clip (ReLU6), so it runs it NCHW between two transposes: two extra kernels, and the clip cannot fuse into the
    norm before it (mobilenet-v2: 34 such kernels, a tenth of a 90 %-sparse level's time)."""
    import tvm
    from tvm import relax

    def axes_of(call):
        if call.attrs.axes is None:
            return None
        return [int(a) for a in call.attrs.axes]

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.permute_dims" or not isinstance(call.args[0], relax.Var):
                return call
            inner = self.lookup_binding(call.args[0])
            if not (isinstance(inner, relax.Call) and getattr(inner.op, "name", None) in ELEMENTWISE
                    and isinstance(inner.args[0], relax.Var)):
                return call
            first = self.lookup_binding(inner.args[0])
            if not (isinstance(first, relax.Call) and getattr(first.op, "name", None) == "relax.permute_dims"):
                return call
            p, q = axes_of(first), axes_of(call)
            if p is None or q is None or len(p) != len(q) or [p[a] for a in q] != list(range(len(p))):
                return call
            return relax.Call(inner.op, [first.args[0], *inner.args[1:]], inner.attrs, inner.ty_args)

    out = tvm.IRModule(attrs=mod.attrs)
    for gv, func in mod.functions.items():
        out[gv] = Rewriter(mod).visit_expr(func) if isinstance(func, relax.Function) else func
    return relax.transform.DeadCodeElimination()(out)  # the transposes now unused


def _lifted_names(transform, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Names for the outputs of a lifted weight transform, and how each was computed from torch's parameter: an output
    made from a single weight keeps that weight's name (`features.1.0.weight`, "permute_dims(2,3,1,0)")."""
    from tvm import relax

    (params_tuple,) = transform.params
    source: dict = {}  # var -> (index of the one weight it comes from, or None; the operations since)
    tuples: dict = {}
    for block in transform.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.TupleGetItem) and value.tuple_value.same_as(params_tuple):
                source[binding.var] = (value.index, "")
            elif isinstance(value, relax.Call):
                inputs = {source[v][0] for v in relax.analysis.free_vars(value) if v in source}
                op = getattr(value.op, "name", "op").rsplit(".", 1)[-1]
                if op == "permute_dims" and value.attrs.axes is not None:
                    op += "(" + ",".join(str(int(a)) for a in value.attrs.axes) + ")"
                before = source[value.args[0]][1] if value.args and value.args[0] in source else ""
                source[binding.var] = (inputs.pop() if len(inputs) == 1 else None, f"{before} {op}".strip())
            elif isinstance(value, relax.Tuple):
                tuples[binding.var] = value.fields
    returned = transform.body.body  # the tuple the function returns, bound in its dataflow block or written inline
    outputs = list(returned.fields if isinstance(returned, relax.Tuple) else tuples[returned])
    out, how = [], {}
    for field in outputs:
        index, ops = source.get(field, (None, "computed"))
        name = names[index] if index is not None else f"lifted{len(out)}"
        if name in out:
            name = f"{name}.{len(out)}"
        out.append(name)
        if ops:
            how[name] = ops
    return out, how


@dataclass
class CompiledModule:
    name: str  # member name, e.g. lib/module0.so
    relax: object
    params: list  # ParamSpec
    extra_inputs: list = field(default_factory=list)
    layout: str = "NCHW"  # of the convolutions' activations (weights are stored in the layout the kernels read)


@dataclass
class Exported:
    """The levels exported: the distinct modules, a manifest row and a weight set per level, reference outputs."""

    modules: list[CompiledModule]
    rows: list[dict]
    members: dict[str, bytes]
    reference: dict[str, np.ndarray]


def export_levels(ckpt, alphas, strategy, target, xs: np.ndarray, accuracy: list[dict], bar,
                  sparse=None) -> Exported:
    """Every level's network exported to Relax once per distinct structure (e.g. every sparsity level shares one
    module), its weights in the module's parameter order, and its torch outputs on the sample inputs `xs`.
    `sparse` (a sparse.Chooser, per-level modules only): the 1x1 convolutions it measures faster as CSR kernels run
    so, in a module of that level's own."""
    import torch

    from lcs.evaluate import accuracy_at
    from tvm_build import graph
    from tvm_build.compile import module_key

    example = torch.from_numpy(xs[0])
    bar.step("materializing levels", 0)
    nets = strategy.networks(ckpt, alphas, example)
    bar.step("materialized levels")
    modules: list[CompiledModule] = []
    by_structure: dict[str, CompiledModule] = {}
    rows, members, reference = [], {}, {"input": xs}
    exported: dict = {}
    for index, (alpha, net) in enumerate(zip(alphas, nets)):
        level = ckpt.model.cmap.level(alpha)
        bar.step(f"level {index}: export ({level.label()})")
        with torch.no_grad():
            reference[art.reference_key(index)] = np.stack([net.reference(torch.from_numpy(x)).numpy() for x in xs])
        arrays = graph.param_arrays(net.export)
        # identical network structure (e.g. every sparsity level): export once, reuse the Relax module
        shape_key = (repr(net.export), tuple(graph.param_specs(arrays)))
        if shape_key not in exported:
            mod, ep = to_relax(net.export, net.args)
            order = graph.export_order(ep)
            # per-level modules take plain weights: their layouts can be chosen at build time (weights-as-input and
            # alpha-input weights are computed in the graph or by the host, in torch's layout)
            lifted = ChannelsLast(mod, order) if strategy.channels_last else None
            exported[shape_key] = (mod, order, lifted)
        mod, order, lifted = exported[shape_key]
        if sorted(order) != sorted(arrays):
            raise LcsError(f"level {index}: exported parameters do not match the network's ({len(order)} vs "
                           f"{len(arrays)})")
        arrays = {name: arrays[name] for name in order}
        from_torch, sparse_layers, stretch = None, [], None
        if lifted is not None:
            mod, arrays, from_torch = lifted.main, lifted.weights(arrays), lifted.from_torch
            if sparse is not None:
                bar.step(f"level {index}: timing sparse kernels", 0)
                mod, arrays, from_torch, sparse_layers, stretch = sparse(mod, arrays, from_torch)
        specs = graph.param_specs(arrays, from_torch)
        structure = module_key(mod, target)
        if strategy.one_module and modules:
            graph.check_same_specs(modules[0].params, specs, f"strategy {strategy.name}")
            if structure not in by_structure:
                raise LcsError(f"strategy {strategy.name}: level {index} exports a different graph than level 0")
        compiled = by_structure.get(structure)
        if compiled is None:
            compiled = CompiledModule(art.library_member(len(modules)), mod, specs, net.extra_inputs,
                                      "NHWC" if lifted is not None else "NCHW")
            modules.append(compiled)
            by_structure[structure] = compiled
        weights_name = strategy.weights_member(index)
        members[weights_name], encoding = art.encode_weights(arrays)  # sparse arrays: bitmask + nonzeros
        rows.append({
            "index": index, "alpha": float(alpha), "label": level.label(), "keep": level.keep,
            "width": level.width, "bits": level.bits, "accuracy": accuracy_at(accuracy, alpha),
            "latency_ms": None, "threads": None, "cycles": None, "max_abs_diff": None,
            "members": {"library": compiled.name, "weights": weights_name},
            **({art.WEIGHTS_ENCODING_KEY: encoding} if encoding else {}),
            **({art.SPARSE_LAYERS_KEY: sparse_layers} if sparse_layers else {}),
            **({art.SPARSE_STRETCH_KEY: stretch} if stretch else {}),
            **{e["name"]: e["value"] for e in net.extra_inputs}})
        bar.step(f"level {index}: exported")
    return Exported(modules, rows, members, reference)
