"""`bnnctl bench --model NAME --batch N`: the latency mode of the model benches, its record, the memory floor
from a tools/cpu_peaks record, the checks of its predictions and the report's table; on a small MNIST MLP."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from bnnctl import bench_records
from bnnctl.bench import latency, mlp, timing
from bnnctl.bench_records import check_bench_record, read_bench_record
from bnnctl.cli import app
from bnnctl.report.kernels import cpu_peaks_section, find_benches, latency_section
from bnnctl.report.records import Notes
from tests.test_bench import _small_mnist_mlp
from tests.test_bench_convnet import predict_other_classes

VARIANTS = "xnor-bitplane,plan-bitplane,xnor-integer,xnor,torch"


@pytest.fixture
def small_mlp(monkeypatch, tmp_path):
    # the bench also reads ./results/bench: from a folder of its own, only the records a test writes are found
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mlp, "load_bench_model", _small_mnist_mlp)
    monkeypatch.setattr(latency, "LATENCY_BUDGET_S", 0.01)
    monkeypatch.setattr(latency, "LATENCY_BLOCK", 3)


def write_peaks(folder, name="20260101T000000-cpu-peaks.json", machine=None, l2=1 << 20, l3=32 << 20, threads=2,
                reads=None):
    """A tools/cpu_peaks record in popc_peak's layout, of this CPU unless ``machine`` says otherwise."""
    reads = reads or {"l2": (40.0, 70.0), "l3": (20.0, 35.0), "memory": (8.0, 10.0)}
    block = {"rows": {"xor+popcnt scalar": {"one_thread": 100.0, "all_threads": 200.0}},
             "best_popcount_over_fp32_fma": 2.0,
             "read_bandwidth_gbs": {level: {"one_thread": one, "all_threads": all_, "buffer_bytes_one_thread": 1024,
                                            "buffer_bytes_all_threads": 2048} for level, (one, all_) in reads.items()}}
    rec = {"kind": "cpu-peaks", "hardware": "some CPU (2 threads)", "machine": machine or timing.cpu_identity(),
           "threads": {str(threads): block}, "caches": {"l2_bytes_per_core": l2, "l3_bytes": l3, "source": "sysfs"}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(rec))
    return folder / name


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def test_the_latency_record_per_variant_and_thread_count(tmp_path, small_mlp):
    out = tmp_path / "out"
    peaks = write_peaks(out)
    res = run_cli("--model", "mnist-mlp", "--batch", "1", "--threads", "1", "--variant", VARIANTS, "--device", "cpu",
                  "--repeat", "2", "--data-dir", str(tmp_path / "no-data"), "--out", str(out))
    assert res.exit_code == 0, res.output
    (path,) = out.glob("*-cpu-mnist-mlp-latency.json")
    rec = read_bench_record(path).data  # through the schema, checksum verified
    assert rec["kind"] == "mnist-mlp-latency" and rec["mode"] == "latency" and rec["batch_size"] == 1
    assert rec["threads"] == [1] and rec["status"] == "ok" and rec["load"]["threads"] == 1
    weights = rec["model"]["packed_weight_bytes"]
    assert weights == 32 * 13 * 8 + 10 * 1 * 8  # 784-32-10: 13 words of 8 bytes per row of 784 inputs, 1 per 32
    floor = rec["floor"]["threads"]["1"]
    assert floor == {"level": "l2", "read_gbs": 40.0, "floor_ms": weights / 40e9 * 1e3, "source": str(peaks)}
    ran = {n for n, e in rec["variants"].items() if e["status"] == "ok"}
    assert ran == set(VARIANTS.split(","))
    torch_ms = rec["variants"]["torch"]["threads"]["1"]["median_ms"]
    for name in ran:
        row = rec["variants"][name]["threads"]["1"]
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["calls"] >= 3
        assert row["images_checked"] == row["calls"]  # one image per call, none seen twice in one pass
        assert row["predictions_differing_from_torch"] == 0
        assert row["x_torch"] == pytest.approx(torch_ms / row["median_ms"])
        assert row["x_best_torch"] == row["x_torch"]  # torch fp32 is the only torch variant timed
        assert row["share_of_floor"] == pytest.approx(floor["floor_ms"] / row["median_ms"])
    targets = rec["targets"]["threads"]["1"]
    assert targets["best_torch"] == "torch" and targets["default_engine_variant"] == "plan-bitplane"
    assert targets["fastest_engine"] in ran and targets["default_engine_variant_ran"] is True
    assert rec["targets"]["exact_variants_same_predictions"] is True
    assert rec["variants"]["torch-bf16"]["status"] == "not run: not selected"
    assert "median ms" in res.output and "p90 ms" in res.output and "floor at 1 thread(s)" in res.output
    assert "default engine variant for 1 image(s) per call: plan-bitplane" in res.output


def test_several_images_per_call_and_two_thread_counts(tmp_path, small_mlp):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = latency.bench_latency("mnist-mlp", None, "cpu", tmp_path / "no-data", batch=4, threads="1,2",
                                       repeat=1, names=["xnor-integer", "torch"], budget_s=0.01, block=2)
        assert torch.get_num_threads() == 1  # the caller's thread count again, after timing at 2
    finally:
        torch.set_num_threads(before)
    assert result["threads"] == [1, 2] and result["batch_size"] == 4
    for name in ("xnor-integer", "torch"):
        for t in ("1", "2"):
            row = result["variants"][name]["threads"][t]
            assert row["calls"] == 2 and row["images_checked"] == 8
    assert result["floor"]["threads"]["1"]["why"].startswith("no tools/cpu_peaks record")
    assert result["variants"]["xnor-integer"]["threads"]["1"]["share_of_floor"] is None


def test_an_exact_variant_that_predicts_other_classes_fails_the_command(tmp_path, small_mlp, monkeypatch):
    predict_other_classes(monkeypatch, "xnor-integer")
    res = run_cli("--model", "mnist-mlp", "--batch", "1", "--threads", "1", "--variant", "xnor-integer,torch",
                  "--device", "cpu", "--repeat", "1", "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path))
    assert res.exit_code == 2
    assert "xnor-integer predicted other classes than the fp32 float model, so a kernel is wrong" in res.output
    rec = json.loads(next(tmp_path.glob("*-latency.json")).read_text())
    row = rec["variants"]["xnor-integer"]["threads"]["1"]
    assert row["predictions_differing_from_torch"] == row["images_checked"] > 0
    assert rec["status"] == "failed" and rec["targets"]["exact_variants_differing"] == ["xnor-integer"]


@pytest.mark.parametrize("args,message", [
    (["--model", "mnist-mlp", "--batch", "0"], "--batch must be at least 1, got 0."),
    (["--model", "mnist-mlp", "--batch", "-3"], "--batch must be at least 1, got -3."),
    (["--batch", "1"], "--batch goes with --model."),
    (["--model", "mnist-mlp", "--threads", "1"], "--threads goes with --batch, the latency mode of a model bench."),
    (["--model", "mnist-mlp", "--batch", "1", "--threads", "0"], "--threads takes thread counts of at least 1"),
    (["--model", "mnist-mlp", "--batch", "1", "--threads", "one"], "--threads takes thread counts separated by commas"),
    (["--model", "mnist-mlp", "--batch", "1", "--threads", "4096"], "--threads 4096 is more than the"),
    (["--model", "mnist-mlp", "--batch", "20000"], "--batch 20000 is more than the 10,000 test images the bench has."),
    (["--model", "mnist-mlp", "--batch", "1", "--variant", "xnor-paper"], "--variant xnor-paper cannot run here"),
])
def test_bad_latency_arguments_are_one_sentence(tmp_path, small_mlp, args, message):
    res = run_cli(*args, "--device", "cpu", "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and message in " ".join(res.output.split())
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_engine_variants_get_the_exports_own_per_pixel_table_where_it_equals_the_transform():
    """A deployed export maps pixels through the table it carries (natively, on the plan): the bench gives the
    engine no transform where that table gives every byte the value the model's fitted transform gives it."""
    from bnnctl.bench.model_bench import engine_transform
    from bnnctl.data import scale_to_pm1
    from tests.test_native_plan import ODD_PIXEL_TRANSFORMS, odd_model
    exported, _ = odd_model("mlp-odd", "standardize")
    fitted = ODD_PIXEL_TRANSFORMS["standardize"]
    assert engine_transform(exported, fitted) is None
    assert engine_transform(exported, scale_to_pm1) is scale_to_pm1  # another transform: kept
    bare, _ = odd_model("mlp-odd", "standardize", carry=False)
    assert engine_transform(bare, fitted) is fitted
    eight_bit, _ = odd_model("mlp-odd")  # 2x/255 - 1: the engine computes it, no table needed
    assert engine_transform(eight_bit, scale_to_pm1) is scale_to_pm1


def test_the_floor_is_the_level_the_weights_fit_in():
    bw = timing.ReadBandwidth(source=timing.Path("peaks.json"), l2_bytes=1 << 20, l3_bytes=32 << 20,
                              gbs={1: {"l2": 40.0, "l3": 20.0, "memory": 8.0}, 2: {"l2": 70.0, "l3": 35.0}})
    assert timing.weight_floor(1 << 20, 1, bw)["level"] == "l2"
    assert timing.weight_floor((1 << 20) + 1, 1, bw)["level"] == "l3"
    assert timing.weight_floor((1 << 20) + 1, 2, bw) == {"level": "l2", "read_gbs": 70.0,
                                                         "floor_ms": ((1 << 20) + 1) / 70e9 * 1e3,
                                                         "source": "peaks.json"}
    assert timing.weight_floor(64 << 20, 1, bw)["floor_ms"] == pytest.approx((64 << 20) / 8e9 * 1e3)
    assert timing.weight_floor(64 << 20, 2, bw) == {"level": "memory",
                                                    "why": "peaks.json has no memory read bandwidth for 2 threads"}
    assert "why" in timing.weight_floor(10, 1, None)


def test_the_floor_reads_the_ladder_at_the_weights_size():
    """With a ladder of buffer sizes, the rate of the largest buffer not above the weights (a bound: a larger one
    reads slower), its smallest where all are larger; the level is still named. Other thread counts: the levels."""
    ladder = [(1 << 20, 60.0), (2 << 20, 55.0), (4 << 20, 50.0), (8 << 20, 30.0)]
    bw = timing.ReadBandwidth(source=timing.Path("peaks.json"), l2_bytes=1 << 19, l3_bytes=32 << 20,
                              gbs={1: {"l2": 80.0, "l3": 20.0, "memory": 8.0}, 2: {"l3": 35.0}},
                              by_size={1: ladder})
    weights = (5 << 20) + 3
    assert timing.weight_floor(weights, 1, bw) == {"level": "l3", "read_bytes": 4 << 20, "read_gbs": 50.0,
                                                   "floor_ms": weights / 50e9 * 1e3, "source": "peaks.json"}
    assert timing.weight_floor(4 << 20, 1, bw)["read_gbs"] == 50.0
    assert timing.weight_floor((4 << 20) - 1, 1, bw)["read_gbs"] == 55.0
    assert timing.weight_floor(1000, 1, bw)["read_bytes"] == 1 << 20
    assert timing.weight_floor(64 << 20, 1, bw)["read_gbs"] == 30.0
    assert timing.weight_floor(weights, 2, bw) == {"level": "l3", "read_gbs": 35.0,
                                                   "floor_ms": weights / 35e9 * 1e3, "source": "peaks.json"}


def test_a_records_ladder_is_read_per_thread_count(tmp_path):
    path = write_peaks(tmp_path, threads=2)
    rec = json.loads(path.read_text())
    rec["threads"]["2"]["read_bandwidth_by_size_gbs"] = [
        {"bytes": 2 << 20, "one_thread": 40.0, "all_threads": 70.0},
        {"bytes": 1 << 20, "one_thread": 50.0, "all_threads": 0},  # a starved all-threads read: not a rate
        {"bytes": "big", "one_thread": 1.0, "all_threads": 1.0}]   # damaged: skipped
    path.write_text(json.dumps(rec))
    bw = timing.recorded_read_bandwidth([tmp_path], torch.device("cpu"))
    assert bw.by_size == {1: [(1 << 20, 50.0), (2 << 20, 40.0)], 2: [(2 << 20, 70.0)]}


def test_the_newest_read_bandwidth_of_this_cpu_is_used(tmp_path):
    cpu = torch.device("cpu")
    write_peaks(tmp_path, "20260101T000000-cpu-peaks.json", reads={"l2": (1.0, 2.0)})
    newest = write_peaks(tmp_path, "20260201T000000-cpu-peaks.json", l2=1 << 19, threads=4)
    write_peaks(tmp_path, "20260301T000000-cpu-peaks.json", machine={**timing.cpu_identity(), "model": -7})
    rows_only = json.loads(newest.read_text())
    del rows_only["threads"]["4"]["read_bandwidth_gbs"]  # a record from before the bandwidth was measured
    (tmp_path / "20260401T000000-cpu-peaks.json").write_text(json.dumps(rows_only))
    bw = timing.recorded_read_bandwidth([tmp_path], cpu)
    assert bw.source == newest and bw.l2_bytes == 1 << 19 and bw.l3_bytes == 32 << 20
    assert bw.gbs == {1: {"l2": 40.0, "l3": 20.0, "memory": 8.0}, 4: {"l2": 70.0, "l3": 35.0, "memory": 10.0}}
    assert timing.recorded_read_bandwidth([tmp_path / "none"], cpu) is None


def test_per_call_timing_covers_one_pass_and_the_percentiles():
    x = torch.arange(10).view(10, 1)
    result = timing.time_calls({"id": lambda xb: xb[:, 0]}, x, 3, torch.device("cpu"), rounds=2, budget_s=60.0,
                               block=4)
    times, seen = result["id"]
    assert len(times) == 8 and torch.equal(seen, torch.arange(9))  # 3 whole batches per pass, then from the start
    assert timing.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5 and timing.percentile([1.0, 2.0, 3.0], 90) == 2.8


def latency_record(**row_changes) -> dict:
    row = {"median_ms": 1.0, "p90_ms": 1.5, "calls": 10, "x_torch": 2.0, "x_best_torch": 1.5, "share_of_floor": 0.25,
           "predictions_differing_from_torch": 0, **row_changes}
    return {"format": bench_records.BENCH_FORMAT, "version": bench_records.BENCH_VERSION, "kind": "mnist-mlp-latency",
            "status": "ok", "command": "bnnctl bench", "date": "2026-01-01T00:00:00+00:00",
            "device": {"type": "cpu", "hardware": "some CPU (2 threads)"}, "load": {
                "cores": 2, "threads": 2, "on_cpu": True, "loadavg_1min_before": 0.1, "loadavg_1min_after": 0.1,
                "wall_s": 1.0, "cpu_s": 1.0, "cpu_per_wall": 1.0, "busy": False, "busy_reason": None},
            "batch_size": 1, "floor": {"packed_weight_bytes": 1000, "threads": {"1": {
                "level": "l2", "read_gbs": 10.0, "floor_ms": 0.25}}},
            "variants": {"xnor": {"status": "ok", "label": "XNOR", "threads": {"1": row}},
                         "torch": {"status": "not run: not selected"}},
            "targets": {"threads": {"1": {"default_engine_variant": "xnor-bitplane", "fastest_engine": "xnor"}}}}


@pytest.mark.parametrize("changes,problem", [
    ({"p90_ms": None}, "'p90_ms' of variant 'xnor' at 1 threads is None, not milliseconds"),
    ({"calls": 0}, "'calls' of variant 'xnor' at 1 threads is 0, not a count of calls"),
])
def test_the_schema_checks_each_latency(changes, problem):
    assert check_bench_record(latency_record()) is None
    assert check_bench_record(latency_record(**changes)) == problem
    no_rows = latency_record()
    del no_rows["variants"]["xnor"]["threads"]
    assert check_bench_record(no_rows) == "variant 'xnor' ran but has no latency per thread count"


def test_the_report_shows_the_latencies_their_floor_and_the_read_bandwidth(tmp_path):
    bench = tmp_path / "results" / "bench"
    bench.mkdir(parents=True)
    bench_records.write_bench_record(bench / "20260101T000000-cpu-mnist-mlp-latency.json", latency_record())
    write_peaks(bench)
    notes = Notes()
    benches = find_benches(tmp_path / "results", notes)
    assert not notes.sorted() and len(benches.latency) == 1 and not benches.mlp
    text = latency_section(benches.latency, tmp_path)
    assert ("| mnist-mlp | some CPU (2 threads) (cpu) | 1 | 1 | xnor: XNOR | 1.000 | 1.500 | 2.00 | 1.50 | 0.250 (l2) "
            "| 25% | 0 | quiet |") in text
    assert "default xnor-bitplane, fastest measured xnor" in text
    assert (tmp_path / "latency.csv").read_text().splitlines()[1].startswith(
        "bench/20260101T000000-cpu-mnist-mlp-latency.json,mnist-mlp,")
    peaks = cpu_peaks_section(benches.cpu_peaks, notes)
    assert "| l3 | 0.00 / 0.00 | 20.0 | 35.0 |" in peaks and not notes.sorted()
