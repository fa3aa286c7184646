"""torch -> Relax -> fused TIR kernels -> C source (TVM target "c"), no libtvm on the device.

`lower(net, example)` returns the Relax `main` (a flat list of call_tir bindings after fusion) and the C
source of every kernel. Each kernel is renamed `lcs_k<i>` and scheduled with one pass that inlines every
elementwise intermediate (padding, weight transforms, activation epilogues) so kernels need as little
workspace as possible: on a 64 KB part a padded copy of the input is too much.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lcs.runtime import filtered_tvm_logs
from tvm_build.static_plan import CodegenError


@dataclass
class Lowered:
    mod: object  # tvm IRModule with main + renamed PrimFuncs
    main: object  # relax.Function
    kernels_c: str  # C source of all kernels
    param_names: list[str]  # graph parameter names in the order of main's params after x
    workspace_bytes: int  # largest TVMBackendAllocWorkspace need of any one kernel
    renamed: dict  # relax global name -> C kernel name


def _inline_intermediates(func):
    """Inline every non-output block that can be inlined (elementwise producers and consumers)."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    changed = True
    while changed:
        changed = False
        root = sch.get_sblock("root") if _has_root(sch) else None
        blocks = sch.get_child_blocks(root) if root is not None else []
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)} if root is not None else set()
        for block in blocks:
            if sch.get(block).name_hint in outputs:
                continue
            for attempt in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    attempt(block)
                except Exception:  # not inlinable (a reduction, several consumers...): leave it
                    continue
                changed = True
                break
            if changed:
                break
    return sch.mod["main"]


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False


def lower(net: torch.nn.Module, example: torch.Tensor, *, weights_in_kernel: bool = False, prefix: str = "") -> Lowered:
    """`weights_in_kernel`: fuse each layer's weight transform (blend, mask, quantize) into the conv/matmul that
    reads it, so no transformed weight is ever stored: the least RAM, at the cost of recomputing every weight
    for each output position. Otherwise the transform is its own kernel and runs once per level switch."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    try:
        ep = torch.export.export(net.eval(), (example,))
    except Exception as exc:  # torch.export gives long multi-line errors
        raise CodegenError(f"torch.export failed for the MCU network: {str(exc).splitlines()[0]}") from None
    params = [s.target for s in ep.graph_signature.input_specs if s.kind.name == "PARAMETER"]
    mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    with filtered_tvm_logs():  # LegalizeOps warns once per gather kernel about its "fast mode"
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        ])(mod)
    if weights_in_kernel:
        # FuseOps never fuses a producer into a conv (kOutEWiseFusable); as a reduction (kCommReduce) the conv
        # and matmul take their elementwise weight producers in, which compute_inline then folds into the loop.
        for gv in list(mod.get_global_vars()):
            if gv.name_hint.startswith(("conv2d", "matmul")):
                mod[gv] = mod[gv].with_attr("op_pattern", 3)
    mod = tvm.transform.Sequential([
        relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.DeadCodeElimination(),
    ])(mod)
    funcs = {}
    renamed = {}
    for i, gv in enumerate(sorted((g for g in mod.get_global_vars() if g.name_hint != "main"), key=lambda g: g.name_hint)):
        func = mod[gv]
        name = f"lcs_{prefix}k{i}"
        renamed[gv.name_hint] = name
        funcs[name] = _inline_intermediates(func).with_attr("global_symbol", name)
    # Same module, inlined kernels exported under short C names; relax.build lowers them for target "c"
    # (the VM part it also produces is thrown away: our executor replaces it).
    for gv in list(mod.get_global_vars()):
        if gv.name_hint in renamed:
            mod[gv] = funcs[renamed[gv.name_hint]]
    # The generated executor passes exactly the shapes the kernels were built for, so the per-argument checks
    # (and their message strings, about a third of the flash) are left out.
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}), filtered_tvm_logs():
        built = tvm.compile(mod, target=tvm.target.Target({"kind": "c"}))
    # TVM's C printer spells float infinity `inff` (from clip bounds of +-inf): give it a definition
    source = "#include <math.h>\n#define inff INFINITY\n" + built.mod.imports[0].inspect_source()
    # one library context per source file, or several kernel sets (structured width) collide at link time
    source = source.replace("void* __tvm_ffi__library_ctx = NULL;", "static void* __tvm_ffi__library_ctx = NULL;")
    return Lowered(mod, mod["main"], source, params, _workspace_need(source), renamed)


# device type and id may be literals or variables (`dev_id`): only the size must be a constant
_ALLOC = re.compile(r"TVMBackendAllocWorkspace\(\s*\w+,\s*\w+,\s*\(uint64_t\)(\d+)")
_FUNC = re.compile(r"^TVM_DLL int32_t (\w+)\(", re.M)


def _workspace_need(source: str) -> int:
    """Sum of the constant workspace requests of the neediest kernel (allocations nest within a kernel)."""
    need = 0
    starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(source)] + [(len(source), "")]
    for (start, _), (end, _) in zip(starts, starts[1:]):
        need = max(need, sum(int(n) for n in _ALLOC.findall(source[start:end])))
    return need
