"""Compile a trained subspace with Apache TVM: torch -> torch.export -> Relax -> tvm.compile, per board.

  build.py        `lcs build`: board -> levels -> modules -> verified artifact (lcs/artifact.py holds the format)
  strategy.py     per-level / weights-as-input / alpha-input: how levels become modules (objects, not flags)
  graph.py        which torch network is exported for a level, and its weights as named arrays (torch side)
  alpha_graph.py  the alpha-input network (blend and TopK inside the graph)
  target.py       board -> TVM target; the cross compiler a board needs
  export.py       levels -> Relax modules (torch.export, channels-last), weights, reference outputs
  tune.py         MetaSchedule tuning and its database
  compile.py      fused kernels -> the board's shared library (static executor or Relax VM)
  verify.py       every level against torch through lcs.runtime; thread counts per level
  static_plan.py  the memory plan of a graph that is a list of kernels (shared by the CPU and MCU executors)
  cpu_executor.py the C that runs a CPU module's kernels in a fixed order, without the Relax VM
  mcu/            microcontroller firmware builds (`build_firmware`), dispatched from build.py for mcu/sim boards

Importing this package is cheap; torch and tvm are imported inside the functions that need them.
"""

from lcs.runtime import default_thread_pool_size

# set at import, on purpose: TVM sizes its thread pool once per process, at its first parallel kernel, and any module
# here may be the first to start it (only TVM_NUM_THREADS is set, and only when the user set neither variable)
default_thread_pool_size()
