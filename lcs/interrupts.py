"""SIGINT and SIGTERM end a command the same way: as a `KeyboardInterrupt` raised in the main thread, so every
`finally` and context manager runs (temporary folders such as /tmp/lcs-sim-* are removed, half-written outputs
deleted), then one line and exit 128 + the signal's number.

Some libraries catch the interrupt on its way through their own frames and re-raise it as their own error (TVM
turns it into a `RuntimeError` with a C++ backtrace); `received()` says whether a signal arrived, so the CLI
reports that failure as the interruption it is instead of as a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_received: list[int] = []


def received() -> int | None:
    """The signal that interrupted this command (the first, if several came), if one did."""
    return _received[0] if _received else None


def _handler(signum, frame) -> None:
    _received.append(signum)
    if len(_received) == 1:  # a later signal is recorded, not raised: it must not abort the clean-up the first started
        raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `KeyboardInterrupt` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
