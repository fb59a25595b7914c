"""`bnnctl bench`: what it records and prints, on a CPU problem small enough to run in a second."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bnnctl.bench import kernels as bench
from bnnctl.cli import app
from bnnctl.errors import UserError


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def test_cli_bench_records_every_kernel_with_exactness_and_ratios(tmp_path):
    res = run_cli("--device", "cpu", "--m", "33", "--n", "17", "--k", "130", "--repeat", "3", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    (path,) = tmp_path.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["shape"] == {"m": 33, "n": 17, "k": 130} and rec["binary_ops"] == 2 * 33 * 17 * 130
    assert rec["command"] == f"bnnctl bench --kernel all --m 33 --n 17 --k 130 --repeat 3 --device cpu --out {tmp_path}"
    assert rec["device"]["type"] == "cpu" and rec["device"]["commit"] and rec["device"]["torch"]
    ran = {name: e for name, e in rec["kernels"].items() if e["status"] == "ok"}
    assert set(ran) == {name for name, k in bench.KERNELS.items() if "cpu" in k.devices}
    for name, e in ran.items():
        assert e["exact"] is True and e["runs"] == 3 and e["median_ms"] > 0
        assert e["tbops"] == pytest.approx(rec["binary_ops"] / (e["median_ms"] * 1e-3) / 1e12)
        assert e["x_baseline"] == pytest.approx(ran["baseline"]["median_ms"] / e["median_ms"])
    assert ran["baseline"]["x_baseline"] == 1.0
    assert "including_packing_ms" in ran["xnor"] and rec["packing"]["median_ms"] > 0
    assert rec["kernels"]["xnor-paper"]["status"].startswith("not run: CUDA-only")
    assert "xnor" in res.output and "not run" in res.output and "exact" in res.output


def test_ratios_to_kernels_that_did_not_run_say_not_run(tmp_path):
    res = run_cli("--device", "cpu", "--kernel", "xnor", "--m", "8", "--n", "8", "--k", "64", "--repeat", "3",
                  "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    xnor = rec["kernels"]["xnor"]
    assert xnor["x_baseline"] is None and xnor["x_cublas_fp32"] is None
    assert rec["kernels"]["baseline"]["status"] == "not run: not selected"
    assert "median_ms" not in rec["kernels"]["baseline"]


def test_a_cpu_popcount_ceiling_gives_the_packed_kernels_share_of_it(tmp_path):
    res = run_cli("--device", "cpu", "--kernel", "xnor,cublas", "--m", "8", "--n", "8", "--k", "64", "--repeat", "3",
                  "--popc-peak", "0.5", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert rec["popc_ceiling_tbops"] == 0.5
    assert rec["kernels"]["xnor"]["share_of_popc_ceiling"] == pytest.approx(rec["kernels"]["xnor"]["tbops"] / 0.5)
    assert "share_of_popc_ceiling" not in rec["kernels"]["cublas"]  # a float kernel has no popcount ceiling
    assert "of the measured CPU XOR+popcount ceiling (0.50 T binary-op/s)" in res.output


def test_an_inexact_kernel_is_recorded_and_fails_the_command(tmp_path, monkeypatch):
    wrong = bench.BenchKernel("off by one", lambda o: o.a_pm1 @ o.b_pm1.T + 1)
    monkeypatch.setitem(bench.KERNELS, "cublas", wrong)
    res = run_cli("--device", "cpu", "--kernel", "cublas", "--m", "4", "--n", "4", "--k", "8", "--repeat", "3",
                  "--out", str(tmp_path))
    assert res.exit_code == 2 and "kernels inexact: cublas" in res.output
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["kernels"]["cublas"]["exact"] is False


@pytest.mark.parametrize("spec,message", [("xnr", "unknown kernel xnr"), ("", "unknown kernel ''")])
def test_unknown_kernel_names_are_a_user_error(spec, message):
    with pytest.raises(UserError, match=message):
        bench.parse_kernel_names(spec)
    assert bench.parse_kernel_names("baseline,xnor") == ["xnor", "baseline"]  # table order


def test_time_call_keeps_at_least_three_runs_and_stops_at_the_budget():
    calls = []
    ms, runs = bench.time_call(lambda: calls.append(1), bench.torch.device("cpu"), repeat=1000, budget_s=0.0)
    assert runs == bench.MIN_RUNS and len(calls) == runs + 1  # plus the warm-up
    assert ms >= 0
