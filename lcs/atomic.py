"""Write files so that a reader never sees half of one: temp file in the same folder, then rename.

One file-mode policy for every output (checkpoints, artifacts, eval and simulate results): the mode a plain
`open(path, "w")` would give, 0666 less the umask (0644 under the usual umask 022). `mkstemp` alone would
leave 0600, which made checkpoints private while artifacts were not."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def output_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def set_mode(path: str | os.PathLike) -> None:
    """Give a finished output the policy's mode (before it is renamed into place)."""
    os.chmod(path, output_mode())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        set_mode(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode())


def check_writable(target: str | os.PathLike, option: str = "output") -> None:
    """Refuse an output path that cannot be written, before any long work starts: the target must not be a
    folder, the nearest existing folder above it must be a folder (not a regular file) and accept a new file
    (probed by creating and removing one, which also catches read-only mounts and root-squashed shares)."""
    from lcs.errors import ConfigError

    target = Path(target)
    if target.is_dir():
        raise ConfigError(f"{option} {target} is a folder, not a file")
    parent = target.parent
    while not parent.exists():
        if parent.is_symlink() or parent == parent.parent:  # a dangling link, or nothing at all
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {target}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise ConfigError(f"{option} {target}: cannot write in {parent} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
