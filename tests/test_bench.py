"""`bnnctl bench`: what it records and prints, on CPU problems small enough to run in a second or two."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from bnnctl.bench import kernels as bench
from bnnctl.bench import mlp
from bnnctl.bench import tensorcore as tc_bench
from bnnctl.bench import timing
from bnnctl.cli import app
from bnnctl.core.models import build_model
from bnnctl.errors import UserError
from bnnctl.infer.export import export_model
from bnnctl.kernels import tensorcore as tc
from bnnctl.recipe import load_recipe, recipes_dir


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def test_cli_bench_records_every_kernel_with_exactness_and_ratios(tmp_path):
    res = run_cli("--device", "cpu", "--m", "33", "--n", "17", "--k", "130", "--repeat", "3", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    (path,) = tmp_path.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["shape"] == {"m": 33, "n": 17, "k": 130} and rec["binary_ops"] == 2 * 33 * 17 * 130
    assert rec["command"] == f"bnnctl bench --device cpu --m 33 --n 17 --k 130 --repeat 3 --out {tmp_path}"  # as typed
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
        timing.parse_names(spec, bench.KERNELS, "kernel")
    assert timing.parse_names("baseline,xnor", bench.KERNELS, "kernel") == ["xnor", "baseline"]  # table order
    assert timing.parse_names("all", bench.KERNELS, "kernel") == list(bench.KERNELS)
    with pytest.raises(UserError, match="unknown variant nope for --model; choose from all, baseline"):
        timing.parse_names("nope", mlp.VARIANTS, "variant", " for --model")


def test_time_call_keeps_at_least_three_runs_and_stops_at_the_budget():
    calls = []
    ms, runs = timing.time_call(lambda: calls.append(1), torch.device("cpu"), repeat=1000, budget_s=0.0)
    assert runs == timing.MIN_RUNS and len(calls) == runs + 1  # plus the warm-up
    assert ms >= 0


def test_timed_calls_run_in_inference_mode_and_tf32_is_restored():
    modes = []
    record_mode = lambda: modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))  # noqa: E731
    timing.time_call(record_mode, torch.device("cpu"), repeat=3, budget_s=0.0)
    timing.time_round_robin({"a": record_mode, "b": record_mode}, torch.device("cpu"), repeat=2, budget_s=60.0)
    assert len(modes) == 4 + 4 and set(modes) == {(False, True)}
    before = torch.backends.cuda.matmul.allow_tf32
    with timing.measuring():
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.is_inference_mode_enabled()
    assert torch.backends.cuda.matmul.allow_tf32 == before and torch.is_grad_enabled()


def _small_mnist_mlp(path, model_name):
    """load_bench_model's answer for a random MLP of the MNIST recipe with one hidden layer of 32."""
    recipe = load_recipe(recipes_dir() / "mnist.yaml", ["model.hidden=[32]"])
    torch.manual_seed(0)
    model = build_model(recipe["model"], (1, 28, 28), 10).eval()
    exported = export_model({"recipe": recipe, "input_shape": [1, 28, 28], "num_classes": 10}, model)
    return exported, model, {"source": None, "weights": "random", "epoch": None, "recorded_test_error_pct": None,
                             "torch_model": "the float model, random weights"}


def test_model_bench_times_the_torch_reference_and_the_variants_with_autograd_off(tmp_path, monkeypatch):
    """Every call of a variant, the warm-up and each timed pass, runs in inference mode; the torch
    reference's layers see grad mode off (a forward hook on the float model records it)."""
    monkeypatch.setattr(mlp, "load_bench_model", _small_mnist_mlp)
    calls: dict[str, list] = {}
    real_runner = mlp._runner

    def recording_runner(name, exported, float_model, device):
        step = real_runner(name, exported, float_model, device)
        if name == "torch":
            float_model.register_forward_hook(lambda *_: calls.setdefault("torch model", []).append(
                (torch.is_grad_enabled(), torch.is_inference_mode_enabled())))

        def recorded(xb):
            calls.setdefault(name, []).append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            return step(xb)
        return recorded

    monkeypatch.setattr(mlp, "_runner", recording_runner)
    result = mlp.bench_model("mnist-mlp", None, "cpu", tmp_path / "no-data", repeat=2, limit=300,
                             names=["xnor-integer", "torch"])
    assert {n for n, e in result["variants"].items() if e["status"] == "ok"} == {"xnor-integer", "torch"}
    assert set(calls) == {"xnor-integer", "torch", "torch model"}
    for name, modes in calls.items():
        assert len(modes) == 1 + 2 and set(modes) == {(False, True)}, name  # warm-up, then 2 rounds of 1 batch
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


# ---- the tensor-core kernel's benchmarks (bnnctl.bench.tensorcore) -----------------------------------

B1_PEAK_LOG = """NVIDIA H100 80GB HBM3, 132 SMs, clock 1980000 kHz (max)
cuda-core xor+popc+add            250.5 T ops/s      1000 ops/clk/SM (clock64, 528 blocks, 1.000 ms)
mma.sync m16n8k256 AND           4000.0 T ops/s     16000 ops/clk/SM (clock64, 264 blocks, 1.000 ms)
wgmma m64n128k256 b1 AND         8000.0 T ops/s     32000 ops/clk/SM (clock64, 132 blocks, 1.000 ms)
"""


def test_b1_peaks_are_read_from_the_micro_benchmark_output():
    assert tc_bench.parse_b1_peaks(B1_PEAK_LOG) == {"cuda-core xor+popc+add": 250.5,
                                                    "mma.sync m16n8k256 AND": 4000.0,
                                                    "wgmma m64n128k256 b1 AND": 8000.0}


def test_each_tensor_core_kernel_is_held_to_its_own_peak():
    result = {"shape": {"m": 8192, "n": 8192, "k": 8192}, "kernels": {
        "xnor": {"status": "ok", "tbops": 200.0, "median_ms": 5.0, "exact": True},
        "xnor-tc": {"status": "ok", "tbops": 3000.0, "median_ms": 0.4, "exact": True, "x_torch_bf16": 3.5},
        "xnor-tc-wgmma": {"status": "ok", "tbops": 6000.0, "median_ms": 0.2, "exact": True},
        "bf16": {"status": "ok", "tbops": 800.0, "median_ms": 1.4, "exact": True}}}
    lines = tc_bench.peak_share_lines([result], tc_bench.parse_b1_peaks(B1_PEAK_LOG))
    assert len(lines) == 2
    assert lines[0].startswith("xnor-tc 8192x8192x8192") and "75% of mma.sync m16n8k256 AND" in lines[0]
    assert "x_torch_bf16 3.50" in lines[0]
    assert lines[1].startswith("xnor-tc-wgmma") and "75% of wgmma m64n128k256 b1 AND" in lines[1]


def test_config_lines_compare_every_configuration_with_bf16_the_default_and_the_peak():
    def entry(ms, exact=True):
        return {"median_ms": ms, "tbops": 2 * 8192**3 / ms / 1e9, "x_torch_bf16": 1.25 / ms, "x_default": 0.4 / ms,
                "exact": exact}
    record = {"default_config": "base", "mma_peak_tbops": 10995.1, "shapes": [{
        "shape": {"m": 8192, "n": 8192, "k": 8192}, "bf16_ms": 1.25,
        "configs": {"base": entry(0.4), "fdb": entry(0.2), "fdb_cs": entry(0.25, exact=False)}}]}
    lines = tc_bench.config_lines(record)
    assert lines[0] == "8192x8192x8192: torch bf16 1.250 ms"
    base, fdb, cs = lines[1:]
    assert base.split()[:2] == ["base", "(default)"] and "x bf16 3.12" in base and "x default 1.000" in base
    assert "25% of the mma.sync AND peak" in base and "fastest" not in base
    assert "5498 T binary-op/s" in fdb and "x default 2.000" in fdb and "50% of" in fdb and fdb.endswith("<- fastest")
    assert "exact NO" in cs
    record["mma_peak_tbops"] = None
    assert "peak" not in " ".join(tc_bench.config_lines(record))


def test_bench_configs_times_and_checks_every_configuration_and_records_json(tmp_path, capsys):
    """The GPU check's tc_configs step end to end on the CPU (where every configuration is the CPU kernel)."""
    (tmp_path / "gpu_peaks.log").write_text(B1_PEAK_LOG)
    record = tc_bench.bench_configs(str(tmp_path), shapes=((40, 70, 300),), rounds=2, runs_per_round=3, device="cpu")
    saved = json.loads(next(tmp_path.glob("tc_configs-*.json")).read_text())
    assert saved == record and record["mma_peak_tbops"] == 4000.0 and record["default_config"] == tc.DEFAULT_CONFIG
    (shape,) = record["shapes"]
    assert shape["shape"] == {"m": 40, "n": 70, "k": 300} and list(shape["configs"]) == tc.config_names()
    for entry in shape["configs"].values():
        assert entry["exact"] is True and len(entry["round_ms"]) == 2 and entry["median_ms"] > 0
    assert capsys.readouterr().out.splitlines()[:len(tc.CONFIGS) + 1] == tc_bench.config_lines(record)
