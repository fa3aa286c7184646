"""Compile a trained subspace with Apache TVM: torch -> torch.export -> Relax -> tvm.compile, per board.

  graph.py    which torch network is exported for a level, and its weights as named arrays (torch side)
  compile.py  board -> TVM target, Relax import, compile / cross-compile, MetaSchedule tuning, timing (TVM side)
  static_plan.py  the memory plan of a graph that is a list of kernels (shared by the CPU and MCU executors)
  cpu_executor.py the C that runs a CPU module's kernels in a fixed order, without the Relax VM
  build.py    `lcs build`: levels -> modules -> verified artifact (lcs/artifact.py holds the format)
  mcu/        microcontroller firmware builds (`build_firmware`), dispatched from build.py for `kind: mcu` boards

Importing this package is cheap; torch and tvm are imported inside the functions that need them.
"""

from lcs.runtime import default_thread_pool_size

default_thread_pool_size()  # before anything here starts TVM's thread pool (it is sized once, per process)
