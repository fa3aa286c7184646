"""Build and run the standalone int8 harness (firmware_host/bench/int8_bench.c + the kernels + a network from
`emit_c`) on the host (gcc) or on a QEMU MPS2 board, and parse what it prints."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lcs.errors import LcsError

ROOT = Path(__file__).resolve().parents[2] / "firmware_host"
KERNELS = ROOT / "src" / "kernels_int8.c"
HARNESS = ROOT / "bench" / "int8_bench.c"
LINK = ROOT / "bench" / "int8_link.ld"

# QEMU machine -> (cpu for gcc and qemu, what it is)
BOARDS = {
    "mps2-an385": ("cortex-m3", "Cortex-M3, no DSP extension"),
    "mps2-an386": ("cortex-m4", "Cortex-M4, DSP extension"),
    "mps2-an500": ("cortex-m7", "Cortex-M7, DSP extension"),
}
ICOUNT_SHIFT = 3
INSTRUCTIONS_PER_TICK = 5  # SysTick at 25 MHz, one instruction per 2^3 ns under -icount shift=3


@dataclass
class Run:
    layers: list[tuple[str, int, int]] = field(default_factory=list)  # name, ticks, fnv1a of the output
    output: bytes = b""
    total_ticks: int = 0
    arena_bytes: int = 0
    scratch_bytes: int = 0
    text_bytes: int = 0


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LcsError(f"{name} is not installed (needed to build or run the int8 kernels)")
    return path


def _parse(text: str) -> Run:
    run = Run()
    if "END" not in text.split():
        raise LcsError(f"the int8 harness did not finish; it printed:\n{text[-2000:]}")
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "L":
            run.layers.append((parts[2], int(parts[3]), int(parts[4])))
        elif parts[0] == "OUT":
            run.output = bytes(int(p, 16) for p in parts[1:])
        elif parts[0] == "TOTAL":
            run.total_ticks = int(parts[1])
        elif parts[0] == "ARENA":
            run.arena_bytes, run.scratch_bytes = int(parts[1]), int(parts[3])
    return run


def build(model_c: Path, out: Path, board: str | None, opt: str = "-O2") -> Path:
    """Compile the harness for `board` (None: the host) into `out` (an ELF or a host executable)."""
    inc = f"-I{ROOT / 'src'}"
    if board is None:
        cmd = [_tool("gcc"), opt, "-std=c11", "-Wall", "-Werror", "-DQ8_HOST", inc, str(HARNESS), str(KERNELS),
               str(model_c), "-o", str(out)]
    else:
        if board not in BOARDS:
            raise LcsError(f"no int8 harness for board {board!r}; choose one of {', '.join(BOARDS)}")
        cpu = BOARDS[board][0]
        cmd = [_tool("arm-none-eabi-gcc"), f"-mcpu={cpu}", "-mthumb", "-mfloat-abi=soft", opt, "-std=c11", "-Wall",
               "-Werror", "-ffreestanding", "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
               f"-T{LINK}", inc, str(HARNESS), str(KERNELS), str(model_c), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise LcsError(f"building the int8 harness failed:\n{proc.stderr[-3000:]}")
    return out


def text_size(elf: Path) -> int:
    proc = subprocess.run([_tool("arm-none-eabi-size"), str(elf)], capture_output=True, text=True, check=True)
    text, data, _bss = proc.stdout.splitlines()[1].split()[:3]
    return int(text) + int(data)


def run_host(exe: Path, timeout: float = 120) -> Run:
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise LcsError(f"the host int8 harness exited with {proc.returncode}: {proc.stderr[-1000:]}")
    return _parse(proc.stdout)


def run_qemu(elf: Path, board: str, timeout: float = 600) -> Run:
    cpu = BOARDS[board][0]
    cmd = [_tool("qemu-system-arm"), "-M", board, "-cpu", cpu, "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-icount", f"shift={ICOUNT_SHIFT}", "-semihosting-config", "enable=on,target=native",
           "-kernel", str(elf)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LcsError(f"{board} did not finish the int8 run within {timeout:g} s") from None
    if proc.returncode:
        raise LcsError(f"qemu {board} exited with {proc.returncode}: {proc.stderr[-1000:]}{proc.stdout[-1000:]}")
    run = _parse(proc.stdout)
    run.text_bytes = text_size(elf)
    return run


