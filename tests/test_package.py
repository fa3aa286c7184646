"""`pip install .` (not only editable) gives a working `lcs` with its data files."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_every_package_and_the_console_script(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("lcs-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("lcs/cli.py", "lcs/subspace/levels.py", "lcs/models/small_cnn.py", "targets/__init__.py",
                   "targets/host.json", "tvm_build/__init__.py", "tvm_build/mcu/build.py",
                   "firmware_host/src/main.c", "firmware_host/PROTOCOL.md", "firmware_host/boards/cmsdk/link.ld.in"):
        assert member in names, member
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lcs = lcs.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_importing_lcs_does_not_import_torch():
    code = "import sys, lcs, lcs.subspace.levels, lcs.config, lcs.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
