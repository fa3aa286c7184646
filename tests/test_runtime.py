"""lcs.runtime: runs an artifact with numpy + the TVM runtime only (no torch), switches levels without reloading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lcs.runtime import filtered_tvm_logs

ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_import_pulls_in_neither_torch_nor_tvm():
    proc = _run_python("""
        import sys, lcs.runtime
        bad = [m for m in ("torch", "tvm", "tvm_build") if m in sys.modules]
        assert not bad, bad
    """)
    assert proc.returncode == 0, proc.stderr


def test_filter_drops_only_tvm_noise(capfd):
    with filtered_tvm_logs():
        os.write(2, b"[20:01:02] /src/runtime/vm/executable.cc:276: Warning: Scope Saving: 3\n")
        os.write(2, b"a real warning\n")
        os.write(2, b"executable.cc:340: Warning: Scope Loaded: 7\n")
    err = capfd.readouterr().err
    assert "a real warning" in err and "Scope" not in err


@pytest.fixture(scope="module")
def host_artifact(tiny_build):
    import tvm  # noqa: F401  (part of the test install: fail, do not skip)

    return tiny_build("host", "structured", "0.0,0.5,1.0")


@pytest.mark.tvm
def test_runtime_only_without_torch(host_artifact):
    # torch is installed in this venv; a device has none. Make `import torch` fail as it would there
    # (tvm_ffi tries it and carries on) and run with only libtvm_runtime loaded.
    proc = _run_python(f"""
        import sys
        sys.modules["torch"] = None
        import numpy as np
        from lcs.runtime import Runtime
        rt = Runtime({str(host_artifact)!r}, expect_target="host")
        diffs = rt.check()
        assert max(diffs) <= 1e-4, diffs
        ref = rt.artifact.reference()
        loaded = dict((name, lib) for name, (lib, _) in rt._libs.items())
        executors = list(rt._static.values()) + list(rt._vms.values())
        assert len(loaded) == 3 and len(executors) == 3  # three widths: three modules, each loaded once
        outs = [rt.run(ref["input"][0], level=i) for i in (2, 0, 1, 2)]
        # switching reloaded nothing: the same library and executor objects serve every level
        assert all(loaded[name] is lib for name, (lib, _) in rt._libs.items())
        assert all(a is b for a, b in zip(executors, list(rt._static.values()) + list(rt._vms.values())))
        assert np.array_equal(outs[0], outs[3]) and not np.allclose(outs[0], outs[1])
        assert "tvm.relax" not in sys.modules and not any(m == "torch" or m.startswith("torch.") for m in sys.modules
                                                          if sys.modules[m] is not None)
        try:  # proof that only libtvm_runtime is loaded: the compiler's Relax cannot import
            from tvm import relax
        except Exception:
            pass
        else:
            raise SystemExit("tvm.relax imported: the full compiler library is loaded")
    """, TVM_USE_RUNTIME_LIB="1")
    assert proc.returncode == 0, proc.stderr
    assert "Scope" not in proc.stderr


@pytest.mark.tvm
def test_runtime_errors(host_artifact):
    from lcs.runtime import RunError, Runtime

    rt = Runtime(host_artifact)
    with pytest.raises(RunError, match="does not match"):
        rt.run(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(RunError, match="levels 0..2"):
        rt.set_level(3)
    assert rt.level_for_alpha(0.45) == 1
    rt.set_level(2)
    start = time.perf_counter()
    ms = rt.time(0, number=20, repeat=1)
    wall_ms = (time.perf_counter() - start) * 1e3
    # time() runs the level it is asked for and reports milliseconds per call: 20 calls fit in the wall time
    assert rt.level == 0 and 0 < ms <= wall_ms / 20


@pytest.mark.tvm
def test_build_records_each_levels_thread_count(host_artifact):
    from lcs import artifact as art

    a = art.open_artifact(host_artifact)
    measured = a.manifest.raw["runtime"]
    by_threads = measured["latency_ms_by_threads"]
    assert min(int(k) for k in by_threads) == 1
    for i, level in enumerate(a.levels):  # a level's latency is the one at its own thread count
        threads = level.threads
        assert level.latency_ms == by_threads[str(threads or 1)][i] > 0
        if threads:  # the fewest threads within 3 % of the level's fastest
            fastest = min(v[i] for v in by_threads.values())
            assert by_threads[str(threads)][i] <= 1.03 * fastest
            assert all(by_threads[k][i] > 1.03 * fastest for k in by_threads if int(k) < threads)


def test_thread_pool_gets_an_explicit_size_unless_the_user_gave_one():
    # without TVM_NUM_THREADS / OMP_NUM_THREADS, TVM asks glibc for the CPU count on every parallel kernel launch
    code = """
        import os
        from lcs.runtime import default_thread_pool_size
        default_thread_pool_size()
        print(os.environ.get("TVM_NUM_THREADS"), len(os.sched_getaffinity(0)))
    """
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)})
    given, cpus = proc.stdout.split()
    assert proc.returncode == 0 and given == cpus, proc.stderr
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):  # the user's choice stands
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                              env={**env, "PYTHONPATH": str(ROOT), name: "3"})
        assert proc.stdout.split()[0] == ("3" if name == "TVM_NUM_THREADS" else "None"), proc.stderr


@pytest.mark.tvm
def test_levels_switch_the_thread_count_they_were_built_for(host_artifact, tmp_path):
    from lcs import artifact as art

    a = art.open_artifact(host_artifact)
    members = {name: a.read(name) for name in a.members()}
    levels = [{**lv, "threads": t} for lv, t in zip(a.manifest.raw["levels"], (1, 2, None))]
    path = tmp_path / "threads.lcsa"
    art.write_artifact(path, {**a.manifest.raw, "levels": levels, "runtime": {"threads": 2}}, members)
    # a process of its own: TVM's pool is one per process and sized once
    proc = _run_python(f"""
        import numpy as np
        from lcs.runtime import Runtime
        rt = Runtime({str(path)!r})
        assert rt.pool_threads == 3
        seen = [rt.threads()]
        for level in (1, 2, 0, 1):
            rt.run(np.zeros(rt.input_spec.shape, np.float32), level=level)
            seen.append(rt.threads())
        rt.set_threads(1)  # a cap: no level uses more
        seen.append(rt.threads())
        rt.set_level(0)
        seen.append(rt.threads())
        print(seen)
    """, TVM_NUM_THREADS="3", TVM_USE_RUNTIME_LIB="1")
    assert proc.returncode == 0, proc.stderr
    # level 0: 1 thread, level 1: 2, level 2: no count recorded, so the artifact's cap (2)
    assert proc.stdout.split("\n")[-2] == "[1, 2, 2, 1, 2, 1, 1]", proc.stdout + proc.stderr


@pytest.mark.tvm
def test_runtime_cli_check(host_artifact):
    proc = subprocess.run([sys.executable, "-m", "lcs.runtime", str(host_artifact), "--check"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TVM_USE_RUNTIME_LIB": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("max abs diff") == 3
    proc = subprocess.run([sys.executable, "-m", "lcs.runtime", str(host_artifact), "--target", "rasp4"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "built for target 'host'" in proc.stderr and "Traceback" not in proc.stderr
