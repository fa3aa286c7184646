"""Read pickles that data sets ship (CIFAR-10's batch files) without running code from them.

A pickle is a program: any global it names is imported and may be called (`os.system` in a crafted
`__reduce__`). This unpickler resolves only the few numpy globals that rebuild plain arrays and scalars;
every other global is refused before anything is called. Containers (dict, list, tuple, bytes, str,
numbers) need no globals and load as usual.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path

# (module, name) pairs a pickled numpy array or scalar needs, from numpy 1.x (numpy.core) and 2.x (numpy._core)
_NUMPY = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}
_ALLOWED = _NUMPY | {("_codecs", "encode")}  # protocol-2 pickles from Python 3 spell bytes this way


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # numpy 1.x names; numpy 2 keeps them as numpy._core
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refusing to load {module}.{name} (only numpy arrays and plain data are allowed)")
        return getattr(importlib.import_module(module), name)


def loads(data: bytes, *, encoding: str = "latin1"):
    """Unpickle plain data and numpy arrays; raises `UnsafePickleError` on any other global."""
    return _Restricted(io.BytesIO(data), encoding=encoding).load()


def load_file(path: str | Path, *, encoding: str = "latin1"):
    with open(path, "rb") as fh:
        return _Restricted(fh, encoding=encoding).load()
