"""Board files: one JSON file per board in this folder, and a loader. Data and constants only.

Fields every board has (see README "Boards"):
  name, description, kind ("linux" | "mcu" | "sim"), transport ("local" | "rpc" | "serial" | "sim"),
  cpu, cores, clock_hz, ram_bytes, flash_bytes (null where unbounded),
  power_mw {"idle", "active"}: figures the simulator turns into energy,
  tvm_target: a TVM target dict or tag, cross_compiler / debian_package: how to link for it.
Family-specific sections (e.g. "qemu", "firmware") are kept as-is in `Board.extra`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIRED = ("name", "description", "kind", "transport", "cpu", "cores", "clock_hz", "ram_bytes", "flash_bytes",
            "power_mw", "tvm_target")


class UnknownTarget(ValueError):
    pass


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    kind: str
    transport: str
    cpu: str
    cores: int
    clock_hz: float
    ram_bytes: int | None
    flash_bytes: int | None
    power_mw: dict
    tvm_target: dict | str
    cross_compiler: str | None = None
    debian_package: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        return {**data, **self.extra}


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))


def load(name: str) -> Board:
    path = HERE / f"{name}.json"
    if not path.is_file():
        raise UnknownTarget(f"unknown target {name!r}; valid targets: {', '.join(names())}")
    data = json.loads(path.read_text())
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UnknownTarget(f"board file {path.name} lacks {', '.join(missing)}")
    known = set(Board.__dataclass_fields__) - {"extra"}
    return Board(**{k: v for k, v in data.items() if k in known},
                 extra={k: v for k, v in data.items() if k not in known})
