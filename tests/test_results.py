"""lcs.results: the one reader of `lcs eval` results, shared by builds (lcs.evaluate) and the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcs.results import ResultsError, read_accuracy

ROWS = [{"model": "LCS+L (u)", "alpha": 0.0, "level": "0%", "accuracy": 0.9},
        {"model": "LCS+L (u)", "alpha": 1, "level": "100%", "accuracy": 0.97},
        {"model": "fixed (50%)", "alpha": 0.5, "level": "50%", "accuracy": 0.4}]


def test_reads_the_first_models_rows(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(ROWS))
    assert read_accuracy(path) == [{"alpha": 0.0, "accuracy": 0.9}, {"alpha": 1.0, "accuracy": 0.97}]


def test_builds_and_the_simulator_read_it_alike(tmp_path):
    from lcs.evaluate import accuracy_table
    from lcs.simulate.profile import with_accuracy

    path = tmp_path / "results.json"
    path.write_text(json.dumps(ROWS))
    manifest = {"levels": [{"index": 0, "alpha": 0.0}, {"index": 1, "alpha": 1.0}]}
    assert [lv["accuracy"] for lv in with_accuracy(manifest, path)["levels"]] == \
        [row["accuracy"] for row in accuracy_table({}, path)] == [0.9, 0.97]


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    ("{not json", "not valid JSON: line 1, column 2"),
    (json.dumps({"alpha": 1}), "expected a non-empty list of rows"),
    (json.dumps([]), "expected a non-empty list of rows"),
    (json.dumps([{"model": "m", "alpha": "one", "accuracy": 0.9}]), "row 0: alpha and accuracy must be numbers"),
    (json.dumps([{"model": "m", "alpha": 1.0, "accuracy": float("nan")}]), "row 0: alpha and accuracy must be numbers"),
])
def test_bad_results_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ResultsError, match=message):
        read_accuracy(path)


def test_binary_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "model.lcsa"
    path.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe" * 10)
    with pytest.raises(ResultsError, match="is not a results.json written by `lcs eval --out`"):
        read_accuracy(path)


def test_the_simulators_reader_does_not_import_torch():
    code = "import sys, lcs.results, lcs.simulate.profile; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    assert subprocess.run([sys.executable, "-c", code], cwd=root, env=env).returncode == 0
