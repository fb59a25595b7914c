"""The examples under examples/ run as a user runs them, and do what they say."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bnnctl.infer.bnnx import load_export

REPO = Path(__file__).resolve().parent.parent


def _run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "examples" / name), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_own_bnn_trains_exports_and_the_packed_engine_predicts_what_the_float_model_predicts(tmp_path):
    out = tmp_path / "own.bnnx"
    done = _run_example("own_bnn.py", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "OK: the packed engine predicts what the float model predicts on all 1000 test images"
    float_error = next(line for line in lines if line.startswith("float model: test error"))
    engine_error = next(line for line in lines if line.startswith("packed engine (variant "))
    assert float_error.split()[-1] == engine_error.split()[-1]
    # it learned something: ten classes, so chance is 90% error
    assert float(float_error.split()[-1].rstrip("%")) < 50
    exported = load_export(out)
    assert exported.input_encoding == "uint8_scale" and exported.num_classes == 10
    assert [(layer.kind, layer.role) for layer in exported.layers] == [("conv", "first"), ("dense", "hidden"),
                                                                       ("dense", "output")]

