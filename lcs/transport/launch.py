"""Start a built firmware where the host can talk to it: host-sim on a pseudo-terminal, QEMU on a TCP serial port.

Both return a pyserial URL/path for `lcs.device.Device.open` and a handle to stop the process. `start(binary, board)`
picks by the board's kind; `started_firmware(artifact, board)` starts the firmware an artifact carries. Torch-free and
compiler-free: `lcs deploy --sim` and `lcs simulate --sim` use it, and so does the firmware build (cycle counts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import tempfile
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lcs.errors import LcsError


class ToolchainMissing(LcsError):
    """A compiler or emulator lcs runs is not installed."""


def require_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainMissing(f"{tool} is not installed; install it with: apt-get install {package}")
    return path


@dataclass
class Running:
    url: str
    process: subprocess.Popen
    fds: tuple[int, ...] = ()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for fd in self.fds:
            os.close(fd)
        self.fds = ()

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_host_sim(binary: str | Path) -> Running:
    """The simulator reads/writes the pty master; the host opens the slave (emulation notes 4.6: no socat)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    proc = subprocess.Popen([str(binary)], stdin=master, stdout=master, stderr=subprocess.DEVNULL, close_fds=True)
    # keep our slave fd open: with no slave open, reads on the master fail (EIO) and the simulator would exit
    return Running(path, proc, (master, slave))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(elf: str | Path, qemu: dict, port: int) -> list[str]:
    return ["qemu-system-arm", "-M", qemu["machine"], "-cpu", qemu["cpu"], "-display", "none", "-monitor", "none",
            "-icount", f"shift={qemu.get('icount_shift', 3)}", "-semihosting-config", "enable=on,target=native",
            "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",
            # an Intel .hex image (what `lcs flash` writes) goes in at its own addresses through the generic loader
            *(["-device", f"loader,file={elf}"] if str(elf).endswith(".hex") else ["-kernel", str(elf)])]


def start_qemu(elf: str | Path, qemu: dict, timeout: float = 10.0) -> Running:
    """QEMU holds the guest until the host connects, so nothing the firmware writes is lost (notes 4.4)."""
    require_tool("qemu-system-arm", "qemu-system-arm")
    for _attempt in range(3):
        port = free_port()
        proc = subprocess.Popen(qemu_command(elf, qemu, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass  # probing would consume QEMU's one client slot; only check that it listens
            except OSError:
                time.sleep(0.05)
                continue
            # QEMU accepted (and saw a disconnect); it waits for the next client in server mode
            return Running(f"socket://127.0.0.1:{port}", proc)
        err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "Address already in use" not in err:
            raise LcsError(f"QEMU did not start {qemu['machine']}: {err.strip()[:300] or 'timeout'}")
    raise LcsError("QEMU could not bind a local TCP port")


def start(binary: str | Path, board) -> Running:
    """Run a firmware binary for `board` (a targets.Board): QEMU for MCU boards, a pty for host-sim."""
    if board.kind == "mcu":
        if "qemu" not in board.extra:
            raise LcsError(f"{board.name} is built for, not emulated, here (no QEMU machine in targets/{board.name}"
                           f".json): write it to the board with `lcs flash`, then `lcs deploy --device PORT`")
        return start_qemu(binary, board.extra["qemu"])
    return start_host_sim(binary)


@contextlib.contextmanager
def started_firmware(artifact_path, board_name: str) -> Iterator[str]:
    """Start the firmware an artifact carries for `board_name` (host-sim on a pty, QEMU boards on TCP); yields the
    URL to open with `lcs.device.Device`, and stops the firmware afterwards."""
    import targets
    from lcs.artifact import open_artifact

    art = open_artifact(artifact_path, expect_target=board_name)
    member = art.firmware_binary()
    with tempfile.TemporaryDirectory(prefix="lcs-sim-") as tmp:
        binary = Path(tmp) / Path(member).name
        binary.write_bytes(art.read(member))
        binary.chmod(0o755)
        with start(binary, targets.load(board_name)) as running:
            yield running.url
