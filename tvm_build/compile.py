"""Compile and link: a Relax module fused into kernels, compiled for a target and linked into the board's shared library
(with lcs's static executor when the graph is a plain list of kernels, else a Relax VM program).

Facts this relies on (TVM 0.27, see the notes): targets are dicts or tags, never strings; host targets need "mcpu"
or LLVM emits baseline SSE2 code; MetaSchedule must tune the exact module that ships (weights as inputs); tuning databases are keyed by workload and
target.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from lcs.runtime import filtered_tvm_logs
from tvm_build.static_plan import CodegenError
from tvm_build.target import ToolchainError


def module_key(mod, target) -> str:
    """A key for a module's structure on a target (weights are inputs, so they do not enter it)."""
    import tvm

    text = mod.script(show_meta=False) + json.dumps(str(target.export()))
    return hashlib.sha256(text.encode() + tvm.__version__.encode()).hexdigest()[:20]


def fuse_kernels(mod, target):
    """Legalize and fuse: `main` becomes a list of call_tir kernels (the form tuned, and the static executor's).
    Sorts and sampling are dispatched to the target's TIR first (TopK levels in the alpha-input graph sort), as the
    VM build does before it legalizes."""
    import tvm
    from tvm import relax

    with target:
        mod = tvm.transform.Sequential([relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()])(mod)
    return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                     relax.transform.CanonicalizeBindings(),
                                     relax.pipeline.zero_pipeline()])(mod)


# A kernel with this attribute keeps the local buffers it annotates with STACK on the stack (see tir_pipeline)
STACK_LOCALS = "lcs.stack_locals"
STACK = {"disable_lower_builtin": True}
TIR_PIPELINE = "lcs"


def tir_pipeline() -> str:
    """The TIR pipeline every lcs kernel is compiled with: TVM's default, except that kernels marked STACK_LOCALS skip
    StorageRewrite. TVM 0.27 turns every local buffer into a TVMBackendAllocWorkspace call (heap), so LLVM cannot keep
    an accumulator in registers: each multiply-add of a CSR row loaded and stored its sums. TVM keeps a buffer
    annotated disable_lower_builtin as a stack alloca, which LLVM promotes to registers, but StorageRewrite rebuilds
    the allocations without their annotations. Returns the pipeline's name for tvm.compile(tir_pipeline=...)."""
    import tvm
    from tvm.tirx import compilation_pipeline as cp

    if TIR_PIPELINE in cp.PIPELINE_MAP:
        return TIR_PIPELINE

    def factory():
        base, host, device = cp.get_tir_pipeline("default")

        @tvm.transform.module_pass(opt_level=0, name="lcs.tir_pipeline")
        def pipeline(mod, ctx):
            ours = {gv: f for gv, f in mod.functions.items()
                    if f.attrs is not None and STACK_LOCALS in f.attrs}
            if not ours:
                return base(mod)
            rest = {gv: f for gv, f in mod.functions.items() if gv not in ours}
            config = {k: v for k, v in ctx.config.items()}
            with tvm.transform.PassContext(opt_level=ctx.opt_level,
                                           config={**config, "tirx.disable_storage_rewrite": True}):
                done = base(tvm.IRModule(ours, attrs=mod.attrs))
            functions = dict(done.functions)
            if rest:
                functions.update(base(tvm.IRModule(rest, attrs=mod.attrs)).functions)
            return tvm.IRModule(functions, attrs=done.attrs)

        return pipeline, host, device

    cp.register_tir_pipeline(TIR_PIPELINE, factory)
    return TIR_PIPELINE


def compile_kernels(mod, target):
    """A module of PrimFuncs compiled for the target with lcs's TIR pipeline."""
    import tvm

    return tvm.compile(mod, target=target, tir_pipeline=tir_pipeline())


def compile_module(mod, target):
    """The VM program compiled to machine code ("compiled" mode) rather than interpreted bytecode: 1 us less per
    call of the width-0.25 small CNN (12 -> 11 us), where the interpreter's ~30 bookkeeping calls show."""
    from tvm import relax

    return relax.build(mod, target=target, exec_mode="compiled", tir_pipeline=tir_pipeline())


def build_library(mod, target, board, path: Path) -> dict:
    """Compile a fused module (`fuse_kernels`, or tuned) into the board's shared library at `path`: its kernels and
    the static executor (cpu_executor.py) when `main` is a flat list of kernels, else a Relax VM program. Returns
    the manifest's description of the module's executor."""
    import tvm

    from tvm_build import cpu_executor

    lowered = cpu_executor.kernel_module(mod)
    try:
        plan = cpu_executor.plan_module(lowered)
    except CodegenError as exc:
        export_library(compile_module(mod, target), board, path)
        return {"executor": "vm", "why_not_static": str(exc)}
    # the executor passes exactly the shapes the kernels were built for: their argument checks are dead code
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}), filtered_tvm_logs():
        kernels = compile_kernels(cpu_executor.kernels_of(lowered, plan), target)
    source = path.with_name(path.name + ".executor.c")
    source.write_text(cpu_executor.emit(plan))
    export_library(kernels, board, path, sources=[source, pool_object(board, path.with_name(path.name + ".pool.o"))])
    return {"executor": "static", "entry": cpu_executor.ENTRY, "kernels": len(plan.calls),
            "arena_bytes": plan.arena_bytes}


POOL_SRC = Path(__file__).resolve().parents[1] / "firmware_host" / "src" / "cpu"  # q8_pool.{c,h}


def pool_object(board, out: Path) -> Path:
    """The thread pool the static executor runs parallel loops on (q8_pool.c, the int8 levels' pool), compiled as C
    for the board: TVM links the executor with a C++ compiler on the host, and the pool is C11 (stdatomic)."""
    import subprocess

    cc = board.cross_compiler or "gcc"
    proc = subprocess.run([cc, "-O2", "-fPIC", "-std=c11", "-c", str(POOL_SRC / "q8_pool.c"), "-o", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"compiling the thread pool with {cc} failed: {proc.stderr.strip()[-300:]}")
    return out


def tvm_include_dirs() -> list[str]:
    """Where TVM's C headers are (tvm/ffi/c_api.h, DLPack) for C compiled beside TVM kernels."""
    import tvm
    import tvm_ffi

    return [str(Path(tvm_ffi.__file__).parent / "include"), str(Path(tvm.__file__).parent / "include")]


def export_library(executable, board, path: Path, sources: list[Path] = ()) -> Path:
    """Write a compiled module as a shared library for the board (cross-linked when the board needs it), with the C
    `sources` compiled into it."""
    from tvm.support import cc

    options = [f"-I{d}" for d in tvm_include_dirs()] + [f"-I{POOL_SRC}", "-O2", "-pthread"] if sources else []
    fcompile = cc.cross_compiler(board.cross_compiler or cc.create_shared, options=options,
                                 add_files=[str(s) for s in sources])
    with filtered_tvm_logs():
        try:
            executable.export_library(str(path), fcompile=fcompile)
        except Exception as exc:  # a linker failure surfaces as a RuntimeError with the compiler's output
            raise ToolchainError(f"linking for {board.name} with {board.cross_compiler or 'the host compiler'} "
                                 f"failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
    return path


def scratch_dir():
    return tempfile.TemporaryDirectory(prefix="lcs-build-")
