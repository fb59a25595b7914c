"""`bnnctl bench`: what it records and prints, on CPU problems small enough to run in a second or two."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from bnnctl.bench import kernels as bench
from bnnctl.bench import mlp, model_bench
from bnnctl.bench import tensorcore as tc_bench
from bnnctl.bench import timing
from bnnctl.cli import app
from bnnctl.core.models import build_model
from bnnctl.errors import UserError
from bnnctl.infer.fold import export_model
from bnnctl.kernels import tensorcore as tc
from bnnctl.recipe import load_recipe, recipes_dir
from bnnctl.provenance import hardware


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
    assert "xnor" in res.output and "exact" in res.output
    assert "not run" not in res.output and "xnor-paper" not in res.output  # the table shows what ran, nothing else


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


def test_on_cpu_the_exact_stock_products_int8_and_bf16_are_timed_with_the_best_of_them(tmp_path):
    res = run_cli("--device", "cpu", "--m", "24", "--n", "16", "--k", "200", "--repeat", "3", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    int8, bf16 = rec["kernels"]["int8"], rec["kernels"]["bf16"]
    assert int8["status"] == "ok" and int8["exact"] is True and "_int_mm" in int8["label"]
    assert bf16["status"] == "ok" and bf16["output"]  # how its float32 result is made, recorded
    xnor = rec["kernels"]["xnor"]
    assert xnor["x_torch_int8"] == pytest.approx(int8["median_ms"] / xnor["median_ms"])
    best = rec["best_exact_stock"]
    stock = {name: rec["kernels"][name]["median_ms"] for name in bench.STOCK_EXACT}
    assert best["kernel"] == min(stock, key=stock.get) and best["median_ms"] == min(stock.values())
    for e in rec["kernels"].values():
        if e["status"] == "ok":
            assert e["x_best_exact_stock"] == pytest.approx(best["median_ms"] / e["median_ms"])
    assert "x stock" in res.output and f"x stock: over the best exact stock product, {best['kernel']}" in res.output


def test_bf16_is_exact_on_cpu_only_with_a_float32_output():
    """Sums of 513 +/-1 products: odd values past 256 do not fit bf16's significand. The bf16 row returns
    float32 and is checked in float32, so rounding shows as inexact instead of hiding in a bf16 compare."""
    a, b = torch.ones(2, 513), torch.ones(3, 513)
    ops = bench.Operands(a, b, a, b, bench.kernels.pack(a), bench.kernels.pack(b), 513,
                         (a.double() @ b.double().T).float())
    out = bench.KERNELS["bf16"].run(ops)
    assert out.dtype == torch.float32
    exact = bench.bf16_fp32_output("cpu")
    assert bench._matches(out, ops.exact) is exact
    assert ("exact" if exact else "rounded") in bench.KERNELS["bf16"].note("cpu")
    assert bench.KERNELS["bf16"].note("cuda") is None  # the GPU row is unchanged


def test_a_rounding_stock_product_is_recorded_as_inexact_without_failing_the_command(tmp_path, monkeypatch):
    rounding = bench.BenchKernel("a stock product that rounds", lambda o: (o.a_pm1 @ o.b_pm1.T) + 0.5, stock=True)
    monkeypatch.setitem(bench.KERNELS, "bf16", rounding)
    res = run_cli("--device", "cpu", "--kernel", "xnor,bf16,int8", "--m", "8", "--n", "8", "--k", "64", "--repeat", "3",
                  "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert rec["kernels"]["bf16"]["exact"] is False and rec["best_exact_stock"]["kernel"] == "int8"
    assert "rounded" in res.output


def write_cpu_peaks(folder, name, threads, rows, **fields):
    rec = {"kind": "cpu-peaks", "hardware": hardware(torch.device("cpu")), **fields,
           "threads": {str(threads): {"rows": rows, "best_popcount_over_fp32_fma": 5.0}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(rec))


def test_a_cpu_peaks_record_of_this_cpu_gives_the_ceiling_without_popc_peak(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bench also reads ./results/bench: only the records written here are found
    threads = torch.get_num_threads()
    rows = {"fp32 FMA avx2 (registers)": {"one_thread": 50.0, "all_threads": 100.0},
            "xor+popcount avx2 lookup": {"one_thread": 200.0, "all_threads": 400.0},
            "xor+popcount avx2 harley-seal": {"one_thread": 300.0, "all_threads": 600.0}}
    write_cpu_peaks(tmp_path, "20260101T000000-cpu-peaks.json", threads, rows)  # the older layout: rows only
    other = dict(timing.cpu_identity(), model=-5)
    write_cpu_peaks(tmp_path, "20990101T000000-cpu-peaks.json", threads, rows, machine=other)  # another CPU model
    res = run_cli("--device", "cpu", "--kernel", "xnor,cublas", "--m", "8", "--n", "8", "--k", "64", "--repeat", "3",
                  "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    (path,) = tmp_path.glob("*-cpu-8x8x64.json")
    rec = json.loads(path.read_text())
    assert rec["popc_ceiling_tbops"] == pytest.approx(0.6)  # the best xor+popcount row, all threads, in T
    assert rec["popc_ceiling_source"].endswith("20260101T000000-cpu-peaks.json")
    assert rec["kernels"]["xnor"]["share_of_popc_ceiling"] == pytest.approx(rec["kernels"]["xnor"]["tbops"] / 0.6)
    assert "% peak" in res.output and "recorded for this CPU" in res.output
    # the newest record of this very CPU (same hardware string and machine) wins; its own ceiling field first
    write_cpu_peaks(tmp_path, "20300101T000000-cpu-peaks.json", threads, rows, machine=timing.cpu_identity())
    data = json.loads((tmp_path / "20300101T000000-cpu-peaks.json").read_text())
    data["threads"][str(threads)]["popc_ceiling_tbops"] = 0.75
    (tmp_path / "20300101T000000-cpu-peaks.json").write_text(json.dumps(data))
    newest = tmp_path / "20300101T000000-cpu-peaks.json"
    assert timing.recorded_cpu_peak([tmp_path], torch.device("cpu")) == (0.75, newest)
    assert timing.recorded_cpu_peak([tmp_path / "none"], torch.device("cpu")) is None


def test_every_cpu_instruction_set_path_is_timed_against_its_own_ceiling(tmp_path, monkeypatch):
    """xnor (the dispatched path), xnor-avx2 and xnor-scalar: exact, and each row's share is of its own
    instruction set's best cpu_peaks row (AVX2: the better of lookup and Harley-Seal)."""
    monkeypatch.chdir(tmp_path)  # only the cpu-peaks records written here, not ./results/bench's
    from bnnctl import kernels
    threads = torch.get_num_threads()
    rows = {"xor+popcnt scalar": {"one_thread": 100.0, "all_threads": 200.0},
            "xor+popcount avx2 lookup": {"one_thread": 200.0, "all_threads": 400.0},
            "xor+popcount avx2 harley-seal": {"one_thread": 300.0, "all_threads": 600.0},
            "xor+popcount avx512 vpopcntdq": {"one_thread": 500.0, "all_threads": 1000.0}}
    write_cpu_peaks(tmp_path, "20260101T000000-cpu-peaks.json", threads, rows)
    paths = {"xnor": kernels.cpu_isa(), "xnor-avx2": "avx2", "xnor-scalar": "scalar"}
    runnable = [name for name, isa in paths.items() if isa in kernels.supported_cpu_isas()]
    for name in set(paths) - set(runnable):  # named on a CPU without its instruction set: refused up front
        res = run_cli("--device", "cpu", "--kernel", name, "--m", "9", "--n", "30", "--k", "200", "--out", str(tmp_path))
        assert res.exit_code == 2 and f"--kernel {name} cannot run here: this CPU has no" in res.output
    res = run_cli("--device", "cpu", "--kernel", ",".join(runnable), "--m", "9", "--n", "30", "--k", "200",
                  "--repeat", "2", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    (path,) = tmp_path.glob("*-cpu-9x30x200.json")
    got = json.loads(path.read_text())["kernels"]
    ceiling = {"scalar": 0.2, "avx2": 0.6, "avx512vpopcntdq": 1.0}
    for name in runnable:
        e, isa = got[name], paths[name]
        assert e["status"] == "ok" and e["exact"] and e["isa"] == isa
        assert e["share_of_isa_ceiling"] == pytest.approx(e["tbops"] / ceiling[isa])
        assert e["share_of_popc_ceiling"] == pytest.approx(e["tbops"] / 1.0)


def test_cpu_peaks_records_of_other_machines_or_thread_counts_are_not_used(tmp_path):
    rows = {"xor+popcount avx2 lookup": {"one_thread": 200.0, "all_threads": 400.0}}
    threads = torch.get_num_threads()
    write_cpu_peaks(tmp_path, "a-cpu-peaks.json", threads + 1, rows)
    write_cpu_peaks(tmp_path, "b-cpu-peaks.json", threads, rows, machine={"model_name": "other", "cpu_family": 1,
                                                                          "model": 2})
    (tmp_path / "c-cpu-peaks.json").write_text("{not json")
    rec = json.loads((tmp_path / "a-cpu-peaks.json").read_text())
    rec["hardware"] = "Some Other CPU (2 threads)"
    rec["threads"] = {str(threads): rec["threads"].pop(str(threads + 1))}
    (tmp_path / "d-cpu-peaks.json").write_text(json.dumps(rec))
    assert timing.recorded_cpu_peak([tmp_path], torch.device("cpu")) is None


def test_cpu_identity_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\ncpu family\t: 6\nmodel\t\t: 143\n"
                    "model name\t: Intel(R) Xeon(R) Platinum 8480+\n\nprocessor\t: 1\nmodel\t\t: 1\n")
    assert timing.cpu_identity(info) == {"model_name": "Intel(R) Xeon(R) Platinum 8480+", "cpu_family": 6,
                                         "model": 143}
    assert timing.cpu_identity(tmp_path / "absent") == {}


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
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with timing.measuring():
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.is_inference_mode_enabled()
        assert not torch.backends.cudnn.allow_tf32  # the ConvNet bench's float convolutions too
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert torch.is_grad_enabled()


def _small_mnist_mlp(path, model_name):
    """load_bench_model's answer for a random MLP of the MNIST recipe with one hidden layer of 32."""
    recipe = load_recipe(recipes_dir() / "mnist.yaml", ["model.hidden=[32]"])
    torch.manual_seed(0)
    model = build_model(recipe.model, (1, 28, 28), 10).eval()
    exported = export_model({"recipe": recipe.to_dict(), "input_shape": [1, 28, 28], "num_classes": 10}, model)
    return exported, model, {"source": None, "weights": "random", "epoch": None, "recorded_test_error_pct": None,
                             "torch_model": "the float model, random weights"}


def test_model_bench_times_the_torch_reference_and_the_variants_with_autograd_off(tmp_path, monkeypatch):
    """Every call of a variant, the warm-up and each timed pass, runs in inference mode; the torch
    reference's layers see grad mode off (a forward hook on the float model records it)."""
    monkeypatch.setattr(mlp, "load_bench_model", _small_mnist_mlp)
    calls: dict[str, list] = {}
    real_runner, real_frozen = model_bench.runner, model_bench.frozen_float_model

    def hooked_frozen(float_model):  # the torch variants run a frozen copy of the float model
        frozen = real_frozen(float_model)
        frozen.register_forward_hook(lambda *_: calls.setdefault("torch model", []).append(
            (torch.is_grad_enabled(), torch.is_inference_mode_enabled())))
        return frozen

    def recording_runner(spec, name, *args):
        step = real_runner(spec, name, *args)

        def recorded(xb):
            calls.setdefault(name, []).append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            return step(xb)
        return recorded

    monkeypatch.setattr(model_bench, "runner", recording_runner)
    monkeypatch.setattr(model_bench, "frozen_float_model", hooked_frozen)
    result = model_bench.bench_model("mnist-mlp", None, "cpu", tmp_path / "no-data", repeat=2, images=300,
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
