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


def compile_module(mod, target):
    """The VM program compiled to machine code ("compiled" mode) rather than interpreted bytecode: 1 us less per
    call of the width-0.25 small CNN (12 -> 11 us), where the interpreter's ~30 bookkeeping calls show."""
    from tvm import relax

    return relax.build(mod, target=target, exec_mode="compiled")


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
        kernels = tvm.compile(cpu_executor.kernels_of(lowered, plan), target=target)
    source = path.with_name(path.name + ".executor.c")
    source.write_text(cpu_executor.emit(plan))
    export_library(kernels, board, path, sources=[source])
    return {"executor": "static", "entry": cpu_executor.ENTRY, "kernels": len(plan.calls),
            "arena_bytes": plan.arena_bytes}


def tvm_include_dirs() -> list[str]:
    """Where TVM's C headers are (tvm/ffi/c_api.h, DLPack) for C compiled beside TVM kernels."""
    import tvm
    import tvm_ffi

    return [str(Path(tvm_ffi.__file__).parent / "include"), str(Path(tvm.__file__).parent / "include")]


def export_library(executable, board, path: Path, sources: list[Path] = ()) -> Path:
    """Write a compiled module as a shared library for the board (cross-linked when the board needs it), with the C
    `sources` compiled into it."""
    from tvm.support import cc

    options = [f"-I{d}" for d in tvm_include_dirs()] + ["-O2"] if sources else []
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
