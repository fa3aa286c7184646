"""`lcs flash`: write an artifact's firmware image to a real board with pyOCD (or OpenOCD), then prove it runs.

    result = flash("m4.lcsa")                         # the one attached probe; self-test on its serial port
    result = flash("m4.lcsa", probe="0668FF...", port="/dev/ttyACM0")
    plan = flash_plan(open_artifact("m4.lcsa"))       # what would run (`lcs flash --dry-run` prints it)

The artifact's manifest says which board it was built for; its board file (copied into the manifest's `target`)
carries the `flash` section: the pyOCD target name (`pyocd_target`; `pyocd_pack`: the target comes from a CMSIS pack
that `pyocd pack install NAME` fetches once) and, where sensible, the OpenOCD config files (`openocd`). The image
written is the artifact's Intel .hex (tvm_build/mcu/images.py: exactly the ELF's loadable bytes, each at its
address), extracted to a file under the lcs cache named by its sha256, so a dry run can print the exact command.

After the write (pyOCD resets the chip and lets it run), the same hello / weight check / per-level self-test as
`lcs deploy --device` runs on the board's serial port: `--port`, or the port whose USB serial number is the probe's
(ST-Link and DAPLink expose the virtual COM port on the same USB device as the probe).

Torch-free. pyOCD is imported only to list probes; flashing runs its command line, like a user would.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lcs.artifact import Artifact, open_artifact
from lcs.errors import LcsError

TOOLS = ("pyocd", "openocd")


class FlashError(LcsError):
    """The firmware could not be written (no probe, no tool, no image, the tool failed)."""


@dataclass
class FlashPlan:
    board: str
    tool: str
    image_member: str  # the artifact member written (the .hex)
    image_path: Path  # where it is extracted to for the tool
    commands: list[list[str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [shlex.join(cmd) for cmd in self.commands]


@dataclass
class FlashResult:
    plan: FlashPlan
    probe: str | None
    port: str | None
    report: object | None = None  # lcs.deploy.DeployReport of the self-test


def cache_dir() -> Path:
    return Path(os.environ.get("LCS_CACHE_DIR") or Path.home() / ".cache" / "lcs") / "flash"


def _executable(tool: str) -> str:
    """The tool's path: on PATH, else beside this Python (the venv's pyocd), else its bare name."""
    found = shutil.which(tool)
    if found:
        return found
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.is_file() else tool


def flash_plan(art: Artifact, *, probe: str | None = None, tool: str = "pyocd") -> FlashPlan:
    """The commands that write `art`'s image to its board. Refuses artifacts without an image and boards without
    flashing data, in one line each."""
    if tool not in TOOLS:
        raise FlashError(f"unknown flash tool {tool!r}; choose {' or '.join(TOOLS)}")
    target = art.manifest.target
    board = art.target_name
    member = art.manifest.firmware.hex_image if art.manifest.firmware is not None else None
    if not member or member not in art.members():
        raise FlashError(f"{art.path} carries no flashable image: it is a {art.manifest.strategy!r} build for "
                         f"{board!r} (firmware builds for microcontroller boards carry .bin and .hex images)")
    spec = target.get("flash")
    if not isinstance(spec, dict):
        how = f"start it with `lcs deploy {art.path} --sim {board}`" if target.get("qemu") else "it has no probe"
        raise FlashError(f"board {board!r} has no flash section in targets/{board}.json (no pyOCD target): {how}")
    digest = art.manifest.member_sha256(member)
    image = cache_dir() / digest[:16] / Path(member).name
    if tool == "pyocd":
        name = spec.get("pyocd_target")
        if not name:
            raise FlashError(f"targets/{board}.json names no pyocd_target; try --tool openocd")
        cmd = [_executable("pyocd"), "load", "--target", name, *(["--uid", probe] if probe else []),
               "--format", "hex", str(image)]
    else:
        configs = spec.get("openocd") or []
        if not configs:
            raise FlashError(f"targets/{board}.json names no OpenOCD config; use --tool pyocd")
        cmd = [_executable("openocd"), *[a for cfg in configs for a in ("-f", cfg)],
               *(["-c", f"adapter serial {probe}"] if probe else []),
               "-c", f"program {image} verify reset exit"]
    return FlashPlan(board, tool, member, image, [cmd])


def _pyocd_probes(probe: str | None) -> list:
    """Attached debug probes pyOCD sees (CMSIS-DAP, ST-Link, J-Link); `probe` narrows to one unique ID."""
    try:
        import logging

        from pyocd.core.helpers import ConnectHelper
    except ImportError:
        raise FlashError("pyOCD is not installed in this environment: pip install pyocd==0.46.0 "
                         "(requirements/base.txt pins it)") from None
    logging.getLogger("pyocd").setLevel(logging.CRITICAL)  # libusb back-end chatter would break the one-line errors
    try:
        return list(ConnectHelper.get_all_connected_probes(blocking=False, unique_id=probe))
    except Exception as exc:  # a USB stack without permission or back-end: same outcome for the user
        raise FlashError(f"pyOCD could not list debug probes: {exc}") from None


def _check_pyocd_target(name: str, from_pack: bool) -> None:
    from pyocd.target import TARGET

    if name.lower() in TARGET:
        return
    try:
        from pyocd.target.pack.pack_target import ManagedPacks

        known = {t.part_number.lower() for t in ManagedPacks.get_installed_targets()}
    except Exception:
        known = set()
    if name.lower() not in known:
        raise FlashError(f"pyOCD does not know target {name!r} yet: install its CMSIS pack once with "
                         f"`pyocd pack install {name}`" if from_pack else f"pyOCD does not know target {name!r}")


def _serial_port_of(probe_uid: str) -> str | None:
    from serial.tools import list_ports

    for port in list_ports.comports():
        if port.serial_number and port.serial_number.lower() == probe_uid.lower():
            return port.device
    return None


def _run(cmd: list[str], tool: str) -> None:
    if not Path(cmd[0]).is_file() and shutil.which(cmd[0]) is None:
        hint = "apt-get install openocd" if tool == "openocd" else "pip install pyocd==0.46.0"
        raise FlashError(f"{tool} is not installed; install it with: {hint}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        errors = [l for l in lines if "error" in l.lower()] or lines
        raise FlashError(f"{tool} failed (exit {proc.returncode}): {errors[-1][:300] if errors else 'no output'}")


def flash(artifact_path: str | Path, *, probe: str | None = None, port: str | None = None, tool: str = "pyocd",
          self_test: bool = True, progress: bool = True, console=None, device_options: dict | None = None,
          ) -> FlashResult:
    """Write the image, then (unless `self_test` is off) run `lcs deploy`'s self-test on the board's serial port."""
    from lcs.atomic import atomic_path

    art = open_artifact(artifact_path)
    plan = flash_plan(art, probe=probe, tool=tool)
    found = None
    if tool == "pyocd":
        probes = _pyocd_probes(probe)
        if not probes:
            raise FlashError(f"no debug probe with unique ID {probe!r} is attached (`pyocd list` shows them)" if probe
                             else "no debug probe is attached: connect the board's USB (ST-Link / DAPLink) or name "
                                  "one with --probe")
        if len(probes) > 1:
            ids = ", ".join(p.unique_id for p in probes)
            raise FlashError(f"{len(probes)} debug probes are attached ({ids}): choose one with --probe")
        found = probes[0].unique_id
        spec = art.manifest.target["flash"]
        _check_pyocd_target(spec["pyocd_target"], bool(spec.get("pyocd_pack")))
        if probe is None:  # pin the command to the probe that was checked
            plan = flash_plan(art, probe=found, tool=tool)
    plan.image_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(plan.image_path) as tmp:
        Path(tmp).write_bytes(art.read(plan.image_member))
    for cmd in plan.commands:
        _run(cmd, tool)
    result = FlashResult(plan, found or probe, port)
    if not self_test:
        return result
    if port is None and result.probe:
        port = _serial_port_of(result.probe)
    if port is None:
        raise FlashError(f"the firmware is written; no serial port belongs to probe {result.probe or '?'}: name "
                         f"the board's port with --port to run the self-test (or: lcs deploy {art.path} --device PORT)")
    from lcs.deploy import deploy

    result.port = port
    result.report = deploy(artifact_path, device=port, progress=progress, console=console,
                           device_options=device_options)
    return result


def describe_dry_run(art: Artifact, plan: FlashPlan, port: str | None) -> list[str]:
    """`lcs flash --dry-run`: the commands, then the self-test that would follow."""
    where = port or "<the probe's serial port>"
    return [f"# extract {plan.image_member} ({art.manifest.member_size(plan.image_member):,} B) to "
            f"{plan.image_path}", *plan.lines(),
            f"# then the self-test of: lcs deploy {shlex.quote(str(art.path))} --device {where}"]
