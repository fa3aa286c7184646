"""Board -> TVM target: a board's `tvm_target` dict with the host CPU filled in, the thread count kernels are planned
for, and the cross compiler it needs. ("board" is a targets.Board; "target" is always a tvm.target.Target.)"""

from __future__ import annotations

import os
import shutil

from lcs.errors import ConfigError, LcsError


class ToolchainError(LcsError):
    """A cross compiler or TVM piece the build needs is not installed."""


def target_dict(board) -> dict | str:
    """The board's TVM target, with the host CPU filled in for `cpu: native` boards."""
    from tvm.target import codegen

    spec = board.tvm_target
    if isinstance(spec, dict) and board.cpu == "native":
        spec = dict(spec)
        spec.setdefault("mcpu", codegen.llvm_get_system_cpu())
        spec.setdefault("num-cores", os.cpu_count() or 1)
    return spec


def make_target(board, threads: int | None = None):
    """The board's TVM target; `threads` plans the kernels' parallel loops for that many cores instead of all."""
    import tvm

    try:
        target = tvm.target.Target(target_dict(board))
        if threads:
            target = tvm.target.Target({**dict(target.export()), "num-cores": int(threads)})
        return target
    except Exception as exc:  # TVM raises ValueError/TVMError for bad target specs
        raise ConfigError(f"board {board.name}: TVM cannot build target {board.tvm_target!r}: {exc}") from None


def host_target():
    import tvm
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1})


def is_host(board) -> bool:
    return board.cross_compiler is None and board.kind == "linux"


def check_cross_compiler(board) -> None:
    if board.cross_compiler and shutil.which(board.cross_compiler) is None:
        raise ToolchainError(f"cross compiler {board.cross_compiler} for target {board.name} is not installed; "
                             f"install the Debian package {board.debian_package} "
                             f"(apt-get install {board.debian_package})")
