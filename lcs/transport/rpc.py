"""TVM RPC to Linux boards: the one place that turns `--rpc HOST:PORT` or `--tracker HOST:PORT --key K` into a
session; `lcs.transport.board.RpcBoard` runs an artifact's levels over it.

    with connected(Endpoint(rpc="192.168.1.20:9090")) as link:  # a board running `python -m tvm.exec.rpc_server`
        rt = Runtime("model.lcsa", session=link.session)
    with connected(Endpoint(tracker="10.0.0.1:9190", key="rasp4")) as link:  # any free board registered as rasp4
        ...

Before TVM connects, a probe with a timeout checks that the address answers as a TVM RPC server or tracker (`_probe`:
TVM's own clients have no timeouts). Failed attempts are retried with back-off; what still fails is an `RpcError`
naming the address. At a tracker the key is checked against the tracker's summary first (a request for an unknown
key would wait forever), and the request itself has a deadline (a known key whose boards are all busy waits at most
REQUEST_TIMEOUT_S).

TVM's RPC server keeps uploads in a per-session temporary folder: what is uploaded lives as long as the session.

Torch-free; `tvm` is imported only when a session is opened.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from typing import Iterator

from lcs.errors import ConfigError, LcsError

CONNECT_TIMEOUT_S = 3.0  # per TCP probe: a board on the LAN answers in milliseconds
REQUEST_TIMEOUT_S = 60.0  # waiting for a free board at the tracker
SESSION_TIMEOUT_S = 600  # the server drops a session older than this (a dead client must not hold a fleet board)
ATTEMPTS = 3
BACKOFF_S = 0.25  # doubled after every failed attempt


class RpcError(LcsError):
    """A board (or tracker) that cannot be reached over TVM RPC, or a key the tracker does not know."""


def parse_address(text: str | None, option: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:9090`) -> (host, port); anything else is a one-line ConfigError."""
    host, sep, port = (text or "").strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option} wants HOST:PORT (e.g. 127.0.0.1:9090), got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class Endpoint:
    """Where to find the board: a direct RPC server, or a tracker and the key the board registered with."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.rpc is None) == (self.tracker is None):
            raise ConfigError("give either --rpc HOST:PORT or --tracker HOST:PORT --key K")
        if self.tracker is not None and not self.key:
            raise ConfigError("--tracker needs --key (the device key the board registered with)")
        if self.rpc is not None and self.key:
            raise ConfigError("--key goes with --tracker; --rpc connects to one server directly")
        self.address()  # malformed addresses fail before anything else happens

    def address(self) -> tuple[str, int]:
        return parse_address(self.rpc, "--rpc") if self.rpc is not None else parse_address(self.tracker, "--tracker")

    def describe(self) -> str:
        return f"rpc:{self.rpc}" if self.rpc is not None else f"tracker:{self.tracker} key {self.key}"


def endpoint(rpc: str | None = None, tracker: str | None = None, key: str | None = None) -> Endpoint | None:
    """The endpoint the options describe, or None when no RPC option was given."""
    if rpc is None and tracker is None and key is None:
        return None
    return Endpoint(rpc, tracker, key)


def check_key_names_board(key: str | None, target: str, what: str) -> None:
    """A tracker key that is a board name in targets/ must be the board `what` was built or measured for."""
    import targets

    if key and key in targets.names() and key != target:
        raise RpcError(f"tracker key {key!r} is a {key} board; {what} is for {target!r}")


@dataclass
class Link:
    session: object  # tvm.rpc.RPCSession
    endpoint: Endpoint
    attempts: int  # connection attempts it took (1 = no retry)

    def describe(self) -> str:
        return self.endpoint.describe()


@contextlib.contextmanager
def connected(where: Endpoint, **options) -> Iterator[Link]:
    """A TVM RPC session to the board (options as for `connect`), released on exit."""
    link = connect(where, **options)
    try:
        yield link
    finally:
        # TVM closes the session (and the server removes its upload folder) once nothing refers to it any more:
        # drop ours; remote modules and tensors held elsewhere keep it alive until they go
        link.session = None


def connect(where: Endpoint, *, session_timeout: float | None = None, connect_timeout: float | None = None,
            request_timeout: float | None = None, attempts: int | None = None) -> Link:
    """Open the session; None takes the module's default (read at call time). session_timeout 0: no limit."""
    session_timeout = SESSION_TIMEOUT_S if session_timeout is None else session_timeout
    connect_timeout = connect_timeout or CONNECT_TIMEOUT_S
    request_timeout = request_timeout or REQUEST_TIMEOUT_S
    attempts = attempts or ATTEMPTS
    host, port = where.address()
    try:
        import tvm.rpc
    except ImportError as exc:
        raise RpcError(f"TVM RPC needs the TVM runtime ({exc}); pip install apache-tvm==0.27.0.post1") from None
    last, timed_out = "", False
    for attempt in range(1, attempts + 1):
        try:
            _probe(host, port, connect_timeout, tracker=where.tracker is not None)
            if where.rpc is not None:
                session = tvm.rpc.connect(host, port, session_timeout=session_timeout)
            else:
                session = _request(tvm.rpc, host, port, where.key, session_timeout, connect_timeout, request_timeout)
            return Link(session, where, attempt)
        except RpcError:
            raise  # a definite answer (not an RPC server, unknown key, no free board): retrying will not change it
        except Exception as exc:  # refused, timed out, reset, TVM's connect check
            last, timed_out = _one_line(exc), isinstance(exc, TimeoutError)
        if attempt < attempts:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    what = "the board" if where.rpc is not None else "a board through the tracker"
    # a TVM RPC server serves one session at a time and does not answer meanwhile
    busy = "; is another client's session holding the server?" if timed_out and where.rpc is not None else ""
    raise RpcError(f"cannot reach {what} over RPC at {host}:{port} after {attempts} attempts ({last}){busy}")


PROBE_KEY = b"client:lcs-probe"  # matches no server key: a TVM RPC server answers "mismatch" and hangs up


def _probe(host: str, port: int, timeout: float, *, tracker: bool) -> None:
    """Open a TCP connection and have the other end say it is a TVM RPC server (or tracker), all within `timeout`.

    TVM's own clients have no timeouts: its C++ connect blocks for the OS timeout on an unreachable host and forever
    on a port that accepts but never answers, and its tracker client retries a refused port for 60 s. The probe
    speaks the first step of TVM's handshake (tvm.rpc.base): a server answers a key it does not serve with a
    mismatch code (it logs "mismatch key" once); a tracker echoes its magic number.
    """
    from tvm.rpc import base

    magic = base.RPC_TRACKER_MAGIC if tracker else base.RPC_MAGIC
    hello = struct.pack("<i", magic) if tracker else struct.pack("<ii", magic, len(PROBE_KEY)) + PROBE_KEY
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(hello)
        try:
            reply = base.recvall(sock, 4)
        except socket.timeout:
            raise TimeoutError(f"the port accepted a connection but said nothing within {timeout:g} s") from None
        except OSError:  # hung up without a word
            reply = b""
    answer = struct.unpack("<i", reply)[0] if len(reply) == 4 else None
    expected = {base.RPC_TRACKER_MAGIC} if tracker else {base.RPC_CODE_SUCCESS, base.RPC_CODE_MISMATCH,
                                                          base.RPC_CODE_DUPLICATE}
    if answer not in expected:
        raise RpcError(f"{host}:{port} answers, but not as a TVM RPC {'tracker' if tracker else 'server'} "
                       f"(start one with `python -m tvm.exec.{'rpc_tracker' if tracker else 'rpc_server'}`)")


def _request(rpc, host: str, port: int, key: str, session_timeout: float, connect_timeout: float,
             request_timeout: float):
    tracker = rpc.connect_tracker(host, port)
    try:
        # TVM's tracker client has no timeouts of its own: a silent tracker or a queue that never frees would
        # block forever. `_sock` is its one socket.
        tracker._sock.settimeout(connect_timeout)
        summary = tracker.summary()
        queues = summary.get("queue_info") or {}
        known = sorted(set(queues) | {s["key"].partition(":")[2] for s in summary.get("server_info", [])
                                       if str(s.get("key", "")).startswith("server:")})
        if key not in known:
            listed = ", ".join(known) if known else "none: no board has registered"
            raise RpcError(f"the tracker at {host}:{port} knows no board with key {key!r} (keys: {listed})")
        tracker._sock.settimeout(request_timeout)
        try:
            return tracker.request(key, session_timeout=session_timeout, max_retry=1)
        except RuntimeError as exc:
            if "timed out" in str(exc):
                free = queues.get(key, {}).get("free")
                raise RpcError(f"the tracker at {host}:{port} had no free {key!r} board within "
                               f"{request_timeout:g} s ({free} free when asked)") from None
            raise
    finally:
        tracker.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


# -- artifacts on an RPC board ------------------------------------------------------------------------------

def cpu_artifact(path, key: str | None = None):
    """Open (sha256-verified) a CPU build for an RPC board; firmware, or a tracker key naming another board, is
    refused."""
    from lcs.artifact import Artifact, ArtifactError, open_artifact

    art = path if isinstance(path, Artifact) else open_artifact(path)
    path = art.path
    if art.kind != "cpu" or not art.manifest.modules:
        raise ArtifactError(f"{path} is firmware for {art.target_name!r}, not a CPU build; TVM RPC runs "
                            f"`lcs build --target host|rasp4|...` artifacts (firmware goes over --device or --sim)")
    check_key_names_board(key, art.target_name, str(path))
    return art


class HeldFiles:
    """The RPC session as `lcs.runtime.Runtime` sees it, except that a file the board already holds with the same
    sha256 (uploaded and confirmed by `lcs deploy`) is not sent again: the runtime loads the confirmed copy."""

    def __init__(self, session, held: dict[str, str]) -> None:
        self._session, self._held = session, held

    def upload(self, data, target=None):
        from pathlib import Path

        from lcs.artifact import sha256

        name = target or Path(data).name
        blob = data if isinstance(data, bytearray) else Path(data).read_bytes()
        if self._held.get(name) != sha256(bytes(blob)):
            self._session.upload(data, target)

    def __getattr__(self, name):
        return getattr(self._session, name)


def resident_runtime(art, link: Link, held: dict[str, str] | None = None):
    """Every level of `art` loaded on the board behind `link` (libraries loaded there, weights in its memory)."""
    from lcs.runtime import RunError, Runtime

    try:
        return Runtime(art, session=HeldFiles(link.session, held) if held else link.session)
    except RunError as exc:  # most often a library built for another architecture
        reason = str(exc)
    # raised outside the except block on purpose: a chained exception would keep the failed Runtime's frames, and with
    # them the session, alive; TVM's RPC server serves one session at a time and would stay busy
    cpu = art.manifest.target.get("cpu") or "?"
    raise RunError(f"the board at {link.describe()} cannot run {art.path} (built for {art.target_name!r}, cpu {cpu}): "
                   f"{reason}")
