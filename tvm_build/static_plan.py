"""The memory plan of a static executor: read a Relax `main` that is a flat list of call_tir bindings, give every
tensor a place, and list the kernel calls in order. Two executors are written from a plan: the microcontroller
firmware's (mcu/executor.py) and the CPU modules' (native.py), both C with no Relax VM.

* Calls are split in two lists. A call whose inputs do not depend on the network input is level-dependent only
  (blending, TopK masking and quantizing weights): it runs once per level switch. Everything else runs per
  inference.
* Tensors produced by switch calls and read by inference calls live in a persistent `state` region (the weights
  of the current level). All other intermediates share one arena, planned from their lifetimes (first fit,
  `align`-byte aligned): the switch and inference lists never run at the same time, so they reuse the same bytes.
* A reshape (`R.reshape`, what RewriteDataflowReshape makes of a copy-only kernel) is an alias: the same bytes under
  another shape, no call.
* Parameters are weights (bound by the caller) or control vectors (ctrl_params, RAM arrays the firmware writes);
  Relax constants become const arrays.

The C both executors emit the same way lives here too: the kernel calls (`c_kernel_calls`) and constants (`c_array`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lcs.errors import LcsError

# dtype -> (DLPack type code, bits, C type)
DTYPES = {"float32": (2, 32, "float"), "float64": (2, 64, "double"), "int64": (0, 64, "int64_t"), "int32": (0, 32, "int32_t"),
          "bool": (1, 8, "uint8_t"), "int8": (0, 8, "int8_t"), "uint8": (1, 8, "uint8_t")}


class CodegenError(LcsError):
    """The model cannot be turned into static C code."""


def align_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # input | weight | ctrl | const | arena | state | alias
    offset: int = 0  # byte offset in its region (bank, arena, state)
    value: np.ndarray | None = None  # const
    param: str | None = None
    alias_of: str | None = None  # alias: the tensor whose bytes it shares

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype][1] // 8


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
    align: int = 16
    arena_bytes: int = 0
    state_bytes: int = 0
    bank_layout: list[tuple[str, int, int]] = field(default_factory=list)  # (param, offset, nbytes)
    bank_bytes: int = 0

    def calls_in(self, phase: str) -> list[Call]:
        return [c for c in self.calls if c.phase == phase]

    def root(self, name: str) -> Tensor:
        """The tensor that owns `name`'s bytes (itself unless it is an alias)."""
        t = self.tensors[name]
        while t.kind == "alias":
            t = self.tensors[t.alias_of]
        return t

    def weights(self) -> list[Tensor]:
        return [t for t in self.tensors.values() if t.kind == "weight"]


def _ty(expr):
    return expr.ty if hasattr(expr, "ty") else expr.struct_info


def _shape_dtype(expr) -> tuple[tuple[int, ...], str]:
    ty = _ty(expr)
    dtype = str(ty.dtype)
    if dtype not in DTYPES:
        raise CodegenError(f"tensor dtype {dtype} is not supported by the static executor")
    if getattr(ty, "shape", None) is None or not all(hasattr(d, "value") for d in ty.shape.values):
        raise CodegenError("the static executor needs static shapes")
    return tuple(int(d) for d in ty.shape.values), dtype


def plan(main, param_names: list[str], kernel_names: dict[str, str], ctrl_params=frozenset(), *,
         align: int = 16) -> Plan:
    """`main(x, *params)`: `param_names` names the params after x, `kernel_names` maps each called PrimFunc's global
    name to the C symbol suffix of its kernel."""
    import tvm
    from tvm import relax

    p = Plan(align=align)
    names: dict[object, str] = {}
    depends_on_input: set[str] = set()

    params = list(main.params)
    x = params[0]
    shape, dtype = _shape_dtype(x)
    p.tensors["x"] = Tensor("x", shape, dtype, "input")
    names[x] = "x"
    p.input = "x"
    depends_on_input.add("x")
    if len(params) - 1 != len(param_names):
        raise CodegenError("the parameter list of the lowered graph does not match the exported one")
    offset = 0
    for var, pname in zip(params[1:], param_names):
        shape, dtype = _shape_dtype(var)
        cname = f"p{len(p.tensors)}"
        if pname in ctrl_params:
            p.tensors[cname] = Tensor(cname, shape, dtype, "ctrl", param=pname)
        else:
            t = Tensor(cname, shape, dtype, "weight", offset=offset, param=pname)
            p.tensors[cname] = t
            p.bank_layout.append((pname, offset, t.nbytes))
            offset += align_up(t.nbytes, align)
        names[var] = cname
    p.bank_bytes = offset

    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            value = binding.value
            op = getattr(value.op, "name", "") if isinstance(value, relax.Call) else ""
            if op == "relax.reshape" and value.args[0] in names:
                source = names[value.args[0]]
                out = f"t{len(p.tensors)}"
                shape, dtype = _shape_dtype(binding.var)
                p.tensors[out] = Tensor(out, shape, dtype, "alias", alias_of=source)
                names[binding.var] = out
                if source in depends_on_input:
                    depends_on_input.add(out)
                continue
            if op != "relax.call_tir":
                raise CodegenError(f"the static executor only runs call_tir and reshape bindings, found: "
                                   f"{str(value)[:120]}")
            gv, arg_tuple = value.args[0], value.args[1]
            if len(value.args) > 2:
                raise CodegenError("call_tir with symbolic shape arguments is not supported by the static executor")
            kernel = kernel_names[gv.name_hint]
            args = []
            for a in arg_tuple.fields:
                if isinstance(a, tvm.ir.expr.Constant):
                    cname = f"c{len(p.tensors)}"
                    arr = a.value.numpy()
                    shape, dtype = tuple(arr.shape), str(arr.dtype)
                    if dtype not in DTYPES:
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
    infer_reads = {p.root(a).name for c in p.calls_in("infer") for a in c.args[:-1]}
    state_offset = 0
    for c in p.calls_in("switch"):
        t = p.tensors[c.args[-1]]
        if t.name in infer_reads:
            t.kind, t.offset = "state", state_offset
            state_offset += align_up(t.nbytes, align)
    p.state_bytes = state_offset
    p.arena_bytes = max(_plan_arena(p, "switch"), _plan_arena(p, "infer"))
    return p


def _plan_arena(p: Plan, phase: str) -> int:
    """First-fit placement of the phase's arena tensors by lifetime [first write, last read] (a read of an alias is
    a read of the tensor it shares bytes with)."""
    calls = p.calls_in(phase)
    first, last = {}, {}
    for i, c in enumerate(calls):
        for a in c.args[:-1]:
            root = p.root(a)
            if root.kind == "arena":
                last[root.name] = i
        out = c.args[-1]
        if p.tensors[out].kind == "arena":
            first.setdefault(out, i)
            last.setdefault(out, i)
    output = p.root(p.output).name
    if phase == "infer" and output in first:
        last[output] = len(calls)  # read back after the last call
    placed: list[tuple[int, int, int, int]] = []  # (start, end, offset, size)
    top = 0
    for name in sorted(first, key=lambda n: (first[n], -p.tensors[n].nbytes)):
        size = align_up(p.tensors[name].nbytes, p.align)
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


def c_array(values: np.ndarray, ctype: str) -> str:
    """A C initializer list of `values` (floats exactly, as hex literals)."""
    flat = values.reshape(-1)
    if ctype in ("float", "double"):
        suffix, dtype = ("f", np.float32) if ctype == "float" else ("", np.float64)
        items = [f"{float(v).hex()}{suffix}" if np.isfinite(v) else ("INFINITY" if v > 0 else "-INFINITY")
                 for v in flat.astype(dtype)]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)] or ["0"]
    return "{\n  " + ",\n  ".join(lines) + "\n}"


def c_kernel_calls(phases: list[tuple[Plan, str, str, str]]) -> list[str]:
    """C that runs kernels in plan order: a declaration of every kernel the plans call (each a TVM packed function),
    one `call` helper passing it DLTensor pointers, and per (plan, phase, function name, prefix) in `phases` a
    `static int function(void)` calling that phase's kernels in order (0, or -1 when a kernel raised); a tensor's
    DLTensor is named prefix + its name. Needs tvm/ffi/c_api.h and string.h."""
    out = [f"int32_t __tvm_ffi_{k}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);"
           for k in sorted({c.kernel for p, _, _, _ in phases for c in p.calls})]
    out += ["", "static int call(int32_t (*kernel)(void *, const TVMFFIAny *, int32_t, TVMFFIAny *), "
            "const DLTensor *const *tensors, int n) {",
            "  TVMFFIAny args[16], result;",
            "  memset(&result, 0, sizeof result);",
            "  for (int i = 0; i < n; i++) {",
            "    memset(&args[i], 0, sizeof args[i]);",
            "    args[i].type_index = kTVMFFIDLTensorPtr;",
            "    args[i].v_ptr = (void *)tensors[i];",
            "  }",
            "  return kernel(0, args, n, &result);",
            "}"]
    for p, phase, function, prefix in phases:
        out += ["", f"static int {function}(void) {{"]
        for c in p.calls_in(phase):
            if len(c.args) > 16:
                raise CodegenError(f"kernel {c.kernel} takes {len(c.args)} tensors; the executor passes at most 16")
            out.append(f"  {{ const DLTensor *const a[] = {{{', '.join('&' + prefix + a for a in c.args)}}}; "
                       f"if (call(__tvm_ffi_{c.kernel}, a, {len(c.args)})) return -1; }}")
        out += ["  return 0;", "}"]
    return out
