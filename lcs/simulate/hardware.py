"""Hardware in the loop: an executor that really switches levels and runs inferences on a device.

Per step that runs a level: `set_level` when the level differs from the one loaded, then one `infer`
on a sample input. The device's own timing and its predicted class go into the timeline as
`device_latency_ms` and `output`, beside the cost model's expectation.

Timing units (`tick_rate`, the one place that decides): a client that declares `tick_hz` reports
ticks of that rate (the TVM RPC board, `lcs.transport.board.RpcBoard`: nanoseconds measured on
the board by TVM's time_evaluator); otherwise its numbers are CPU cycles of the board, turned into
time with the board's `clock_hz` (serial firmware; on `host-sim` a "cycle" is a nanosecond, its
clock_hz is 1e9).

Sample inputs come from the artifact's reference set (cycled through, and the prediction checked
against the reference output of the same level); without an artifact, all-zero inputs of the
device's input size (timing only).

The client is a board (`lcs.transport.board.Board`, opened by `open_board` as `lcs deploy` opens it): `hello()`,
`set_level(index=)`, `infer(values) -> (outputs, ticks)` and `tick_hz` (None: cycles of the board's clock).
"""

from __future__ import annotations

from typing import Sequence

from lcs.errors import LcsError
from lcs.simulate.model import Option
from lcs.simulate.runner import Execution


class HardwareError(LcsError):
    """The device does not fit the simulation (levels, input size) or answered wrongly."""


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def tick_rate(device, clock_hz: float | None) -> float:
    """Ticks per second of the numbers `device` reports: its own `tick_hz` if it declares one, else the board's
    clock (the numbers are CPU cycles)."""
    rate = getattr(device, "tick_hz", None) or clock_hz
    if not rate or rate <= 0:
        raise HardwareError("the board has no clock_hz to turn device cycles into time")
    return float(rate)


class DeviceExecutor:
    def __init__(self, device, *, clock_hz: float | None, level_indices: Sequence[int], source: str,
                 inputs: Sequence[Sequence[float]] | None = None,
                 reference: dict[int, Sequence[Sequence[float]]] | None = None) -> None:
        self.device, self.tick_hz, self.source = device, tick_rate(device, clock_hz), source
        info = device.hello()
        missing = [i for i in level_indices if not 0 <= i < info.levels]
        if missing:
            raise HardwareError(f"{source} offers {info.levels} levels; the profile needs level(s) "
                                f"{', '.join(map(str, missing))}")
        self.inputs = [list(map(float, x)) for x in inputs] if inputs else [[0.0] * info.input_len]
        for x in self.inputs:
            if len(x) != info.input_len:
                raise HardwareError(f"sample input has {len(x)} values; {source} expects {info.input_len}")
        self.reference = reference or {}
        self.count = 0
        self.disagreements = 0
        self.switch_ms: list[float] = []

    def set_level(self, option: Option) -> None:
        active, ticks = self.device.set_level(index=option.level.index)
        if active != option.level.index:
            raise HardwareError(f"{self.source} reports level {active} after set-level {option.level.index}")
        self.switch_ms.append(ticks / self.tick_hz * 1000.0)

    def infer(self, option: Option) -> Execution:
        sample = self.count % len(self.inputs)
        outputs, ticks = self.device.infer(self.inputs[sample])
        self.count += 1
        predicted = argmax(outputs)
        expected = self.reference.get(option.level.index)
        if expected is not None and argmax(expected[sample]) != predicted:
            self.disagreements += 1
        return Execution(device_latency_ms=ticks / self.tick_hz * 1000.0, output=str(predicted))

    def report(self) -> dict:
        """Device-side totals for the summary."""
        return {"device_inferences": self.count, "device_switches": len(self.switch_ms),
                "device_switch_ms_mean": sum(self.switch_ms) / len(self.switch_ms) if self.switch_ms else None,
                "reference_disagreements": self.disagreements if self.reference else None}
