"""The static executor: read the lowered Relax `main` (a flat list of call_tir bindings), plan memory, write C.

* Calls are split in two lists. A call whose inputs do not depend on the network input is level-dependent only
  (blending, TopK masking and quantizing weights): it runs once per level switch (`lcs_model_run_switch`).
  Everything else runs per inference (`lcs_model_infer`).
* Tensors produced by switch calls and read by inference calls live in a persistent `state` region (the weights
  of the current level). All other intermediates share one arena, planned from their lifetimes (first fit, 16 B
  aligned): the switch and inference lists never run at the same time, so they reuse the same bytes.
* Weights are parameters in a weight bank (two banks in the store, see main.c); control vectors are RAM arrays;
  Relax constants become const arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tvm_build.mcu.lower import CodegenError, Lowered

ALIGN = 16
_DTYPES = {"float32": (2, 32, "float"), "int64": (0, 64, "int64_t"), "int32": (0, 32, "int32_t"),
           "bool": (1, 8, "uint8_t"), "int8": (0, 8, "int8_t"), "uint8": (1, 8, "uint8_t")}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # input | weight | ctrl | const | arena | state
    offset: int = 0  # byte offset in its region (bank, arena, state)
    value: np.ndarray | None = None  # const
    param: str | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _DTYPES[self.dtype][1] // 8


@dataclass
class Call:
    kernel: str
    args: list[str]  # tensor names, inputs then the output
    phase: str  # switch | infer


@dataclass
class Plan:
    tensors: dict[str, Tensor] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    input: str = ""
    output: str = ""
    arena_bytes: int = 0
    state_bytes: int = 0
    bank_layout: list[tuple[str, int, int]] = field(default_factory=list)  # (param, offset, nbytes)
    bank_bytes: int = 0

    def calls_in(self, phase: str) -> list[Call]:
        return [c for c in self.calls if c.phase == phase]


def _ty(expr):
    return expr.ty if hasattr(expr, "ty") else expr.struct_info


def _shape_dtype(expr) -> tuple[tuple[int, ...], str]:
    ty = _ty(expr)
    dtype = str(ty.dtype)
    if dtype not in _DTYPES:
        raise CodegenError(f"tensor dtype {dtype} is not supported by the MCU executor")
    return tuple(int(d) for d in ty.shape.values), dtype


def plan(lowered: Lowered, ctrl_params: set[str]) -> Plan:
    import tvm
    from tvm import relax

    main = lowered.main
    p = Plan()
    names: dict[object, str] = {}
    depends_on_input: set[str] = set()

    params = list(main.params)
    x = params[0]
    shape, dtype = _shape_dtype(x)
    p.tensors["x"] = Tensor("x", shape, dtype, "input")  # read in place from the frame buffer
    names[x] = "x"
    p.input = "x"
    depends_on_input.add("x")
    if len(params) - 1 != len(lowered.param_names):
        raise CodegenError("parameter list of the lowered graph does not match torch.export's")
    offset = 0
    for var, pname in zip(params[1:], lowered.param_names):
        shape, dtype = _shape_dtype(var)
        cname = f"p{len(p.tensors)}"
        if pname in ctrl_params:
            p.tensors[cname] = Tensor(cname, shape, dtype, "ctrl", param=pname)
        else:
            t = Tensor(cname, shape, dtype, "weight", offset=offset, param=pname)
            p.tensors[cname] = t
            p.bank_layout.append((pname, offset, t.nbytes))
            offset += _align(t.nbytes)
        names[var] = cname
    p.bank_bytes = offset

    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call) or "call_tir" not in str(value.op):
                raise CodegenError(f"the MCU executor only runs call_tir bindings, found: {str(value)[:120]}")
            gv, arg_tuple = value.args[0], value.args[1]
            if len(value.args) > 2:
                raise CodegenError("call_tir with symbolic shape arguments is not supported on MCUs")
            kernel = lowered.renamed[gv.name_hint]
            args = []
            for a in arg_tuple.fields:
                if isinstance(a, tvm.ir.expr.Constant):
                    cname = f"c{len(p.tensors)}"
                    arr = a.value.numpy()
                    shape, dtype = tuple(arr.shape), str(arr.dtype)
                    if dtype not in _DTYPES:
                        raise CodegenError(f"constant of dtype {dtype} is not supported")
                    p.tensors[cname] = Tensor(cname, shape, dtype, "const", value=arr)
                    args.append(cname)
                elif a in names:
                    args.append(names[a])
                else:
                    raise CodegenError(f"unsupported call_tir argument {str(a)[:80]}")
            out = f"t{len(p.tensors)}"
            shape, dtype = _shape_dtype(binding.var)
            p.tensors[out] = Tensor(out, shape, dtype, "arena")
            names[binding.var] = out
            phase = "infer" if any(a in depends_on_input for a in args) else "switch"
            if phase == "infer":
                depends_on_input.add(out)
            p.calls.append(Call(kernel, args + [out], phase))
    result = body.body
    if result not in names:
        raise CodegenError("the graph output is not a tensor produced by a call")
    p.output = names[result]
    if p.output not in depends_on_input:
        raise CodegenError("the graph output does not depend on the input")

    # switch outputs read by inference calls persist between switches
    infer_reads = {a for c in p.calls_in("infer") for a in c.args[:-1]}
    state_offset = 0
    for c in p.calls_in("switch"):
        out = c.args[-1]
        if out in infer_reads:
            t = p.tensors[out]
            t.kind, t.offset = "state", state_offset
            state_offset += _align(t.nbytes)
    p.state_bytes = state_offset
    p.arena_bytes = max(_plan_arena(p, "switch"), _plan_arena(p, "infer"))
    return p


def _plan_arena(p: Plan, phase: str) -> int:
    """First-fit placement of the phase's arena tensors by lifetime [first write, last read]."""
    calls = p.calls_in(phase)
    first, last = {}, {}
    for i, c in enumerate(calls):
        for a in c.args[:-1]:
            if p.tensors[a].kind == "arena":
                last[a] = i
        out = c.args[-1]
        if p.tensors[out].kind == "arena":
            first.setdefault(out, i)
            last.setdefault(out, i)
    if phase == "infer":
        last[p.output] = len(calls)  # read back after the last call
    placed: list[tuple[int, int, int, int]] = []  # (start, end, offset, size)
    top = 0
    for name in sorted(first, key=lambda n: (first[n], -p.tensors[n].nbytes)):
        size = _align(p.tensors[name].nbytes)
        start, end = first[name], last[name]
        live = sorted((o, s) for (a, b, o, s) in placed if not (b < start or end < a))
        offset = 0
        for o, s in live:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        p.tensors[name].offset = offset
        placed.append((start, end, offset, size))
        top = max(top, offset + size)
    return top


# -- C ------------------------------------------------------------------------------------------------------

def _c_array(values: np.ndarray, ctype: str) -> str:
    flat = values.reshape(-1)
    if ctype == "float":
        items = [f"{float(v).hex()}f" if np.isfinite(v) else ("INFINITY" if v > 0 else "-INFINITY")
                 for v in flat.astype(np.float32)]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)] or ["0"]
    return "{\n  " + ",\n  ".join(lines) + "\n}"


def ctrl_symbol(param: str) -> str:
    """The C array of a control vector, shared by every plan that reads it."""
    return "ctrl_" + param.replace(".", "_")


def emit_executor(plans: list[Plan], level_plan: list[int]) -> str:
    """C for one or several plans (structured width: one plan per level, kernels named per plan). Plans share the
    arena and the state region (one level is active at a time) and the ctrl arrays (one per layer)."""
    out = ["/* Generated by tvm_build/mcu/executor.py: the static executor of one model. Do not edit. */",
           "#include <math.h>", "#include <string.h>", '#include "tvm/ffi/c_api.h"', '#include "lcs_model.h"', "",
           f"static uint8_t arena[{max(max(p.arena_bytes for p in plans), ALIGN)}] __attribute__((aligned({ALIGN})));",
           f"static uint8_t state[{max(max(p.state_bytes for p in plans), ALIGN)}] __attribute__((aligned({ALIGN})));",
           f"static const uint8_t level_plan[{len(level_plan)}] = {{{', '.join(map(str, level_plan))}}};", ""]
    kernels = sorted({c.kernel for p in plans for c in p.calls})
    out += [f"int32_t __tvm_ffi_{k}(void *self, void *args, int32_t num_args, void *result);" for k in kernels]
    out.append("")
    ctrl_done = set()
    for pi, p in enumerate(plans):
        pre = f"P{pi}_"
        for t in p.tensors.values():
            code, bits, ctype = _DTYPES[t.dtype]
            name = pre + t.name
            if t.shape:
                out.append(f"static const int64_t shape_{name}[{len(t.shape)}] = {{{', '.join(map(str, t.shape))}}};")
            if t.kind == "ctrl" and t.param not in ctrl_done:
                ctrl_done.add(t.param)
                out.append(f"float {ctrl_symbol(t.param)}[{max(1, int(np.prod(t.shape)))}] __attribute__((aligned({ALIGN})));")
            if t.kind == "const":
                out.append(f"static const {ctype} const_{name}[{max(1, t.value.size)}] __attribute__((aligned({ALIGN}))) = "
                           f"{_c_array(t.value, ctype)};")
            data = {"arena": f"arena + {t.offset}", "state": f"state + {t.offset}", "ctrl": ctrl_symbol(t.param or ""),
                    "const": f"(void *)const_{name}", "weight": "0", "input": "lcs_rx_buffer"}[t.kind]
            shape = f"(int64_t *)shape_{name}" if t.shape else "0"
            # only weight tensors change (bank binding); the rest are const and stay out of RAM
            qual = "static DLTensor" if t.kind == "weight" else "static const DLTensor"
            out.append(f"{qual} {name} = {{(void *)({data}), {{kDLCPU, 0}}, {len(t.shape)}, "
                       f"{{{code}, {bits}, 1}}, {shape}, 0, 0}};")
    out.append("")
    out.append("void lcs_model_bind(const uint8_t *bank) {")
    for pi, p in enumerate(plans):
        for t in p.tensors.values():
            if t.kind == "weight":
                out.append(f"  P{pi}_{t.name}.data = (void *)(bank + {t.offset});")
    out.append("}")
    out.append("")
    out.append("static int call(int32_t (*kernel)(void *, void *, int32_t, void *), const DLTensor *const *tensors, int n) {")
    out.append("  TVMFFIAny args[16], result;")
    out.append("  memset(args, 0, sizeof args); memset(&result, 0, sizeof result);")
    out.append("  for (int i = 0; i < n; i++) { args[i].type_index = kTVMFFIDLTensorPtr; args[i].v_ptr = (void *)tensors[i]; }")
    out.append("  return kernel(0, args, n, &result);")
    out.append("}")
    for pi, p in enumerate(plans):
        pre = f"P{pi}_"
        for phase in ("switch", "infer"):
            out.append("")
            out.append(f"static int run_{phase}_{pi}(void) {{")
            for c in p.calls_in(phase):
                if len(c.args) > 16:
                    raise CodegenError(f"kernel {c.kernel} takes {len(c.args)} tensors; the executor passes at most 16")
                out.append(f"  {{ const DLTensor *const a[] = {{{', '.join('&' + pre + a for a in c.args)}}}; "
                           f"if (call(__tvm_ffi_{c.kernel}, a, {len(c.args)})) return -1; }}")
            out.append("  return 0;")
            out.append("}")
        xin, y = p.tensors[p.input], p.tensors[p.output]
        out += ["", f"static int infer_{pi}(const float *input, float *output) {{",
                f"  if ((const void *)input != {pre}{xin.name}.data) memcpy({pre}{xin.name}.data, input, {xin.nbytes});",
                f"  if (run_infer_{pi}()) return -1;",
                f"  memcpy(output, {pre}{y.name}.data, {y.nbytes});",
                "  return 0;", "}"]
    out += ["", "int lcs_model_run_switch(void) {", "  switch (level_plan[lcs_active_level]) {"]
    out += [f"  case {pi}: return run_switch_{pi}();" for pi in range(len(plans))]
    out += ["  }", "  return -1;", "}", "", "int lcs_model_infer(const float *input, float *output) {",
            "  switch (level_plan[lcs_active_level]) {"]
    out += [f"  case {pi}: return infer_{pi}(input, output);" for pi in range(len(plans))]
    out += ["  }", "  return -1;", "}", ""]
    return "\n".join(out)
