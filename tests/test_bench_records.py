"""Bench records (``bnnctl.bench_records``): the machine's load and the busy verdict, the one schema written and
read back, legacy records; and what the bench refuses or fails on: variants that cannot run on the device,
shapes that cannot fit, failed variants, an unusable kernel build folder; tables that fit 80 columns."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from bnnctl import bench_records
from bnnctl.bench import kernels as kernel_bench
from bnnctl.bench import model_bench, timing
from bnnctl.bench.model_bench import SPECS
from bnnctl.bench.specs import ModelSpec
from bnnctl.bench_records import (BENCH_FORMAT, UnreadableBenchRecord, busy_reason, measure_load,
                                  read_bench_record, write_bench_record)
from bnnctl.cli import app
from bnnctl.errors import EXIT_ENVIRONMENT
from bnnctl.kernels.build import KernelBuildFolderError, usable_build_dir
from bnnctl.recipe import load_recipe, recipes_dir
from bnnctl.report.kernels import find_benches
from bnnctl.report.records import Notes

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def quiet_load(**changes) -> dict:
    load = {"cores": 4, "threads": 2, "on_cpu": True, "loadavg_1min_before": 0.1, "loadavg_1min_after": 0.9,
            "wall_s": 30.0, "cpu_s": 60.0, "cpu_per_wall": 2.0}
    return {**load, **changes}


# ---------------------------------------------------------------------------- load and busy

def test_busy_reason_is_one_rule_over_the_load_before_after_and_the_cpu_share():
    assert busy_reason(quiet_load()) is None  # after: 0.9 less this process's own 2 x (1 - e^-0.5) = 0.79
    assert "load average was 1.50 before timing, over 1" in busy_reason(quiet_load(loadavg_1min_before=1.5))
    after = busy_reason(quiet_load(loadavg_1min_after=2.5))  # 2.5 - 0.79 = 1.71 of other work
    assert after.startswith("the 1-minute load average was 2.50 after timing (1.71 without this process)")
    starved = busy_reason(quiet_load(cpu_per_wall=0.3, loadavg_1min_before=None, loadavg_1min_after=None))
    assert starved == "the timed process got 0.30 CPU seconds per second for its 2 threads"
    assert busy_reason(quiet_load(cpu_per_wall=0.3, on_cpu=False)) is None  # a GPU run's CPU share says little
    assert busy_reason(quiet_load(cpu_per_wall=0.3, wall_s=0.5)) is None  # too short to judge


def test_measure_load_records_the_load_fields_and_the_verdict(monkeypatch):
    monkeypatch.setattr(bench_records.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    with measure_load(threads=1) as load:
        sum(i * i for i in range(200_000))
    f = load.fields
    assert set(f) == set(bench_records.LOAD_FIELDS)
    assert f["loadavg_1min_before"] == 0.0 and f["wall_s"] > 0 and f["cpu_s"] > 0
    assert f["cpu_per_wall"] == pytest.approx(f["cpu_s"] / f["wall_s"], rel=0.05)
    assert f["busy"] is False and f["busy_reason"] is None and f["cores"] == bench_records.cores()
    monkeypatch.setattr(bench_records.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    with measure_load(threads=1) as load:
        pass
    assert load.fields["busy"] is True and "9.00 before timing" in load.fields["busy_reason"]


def test_a_kernel_bench_record_carries_the_load_and_says_so_when_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_records.os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    res = run_cli("--device", "cpu", "--kernel", "xnor", "--m", "8", "--n", "8", "--k", "64", "--repeat", "3",
                  "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    rec = read_bench_record(next(tmp_path.glob("*.json")))
    assert not rec.legacy and rec.status == "ok" and rec.busy is True
    assert rec.load["threads"] == torch.get_num_threads() and rec.load["loadavg_1min_before"] == 50.0
    assert "busy machine: the 1-minute load average was 50.00 before timing" in res.output.replace("\n", " ")


# ---------------------------------------------------------------------------- the schema

def good_record(**changes) -> dict:
    with measure_load(threads=1) as load:
        pass
    record = {"kind": "kernels", "status": "ok", "command": "bnnctl bench", "date": "2026-12-01T00:00:00+00:00",
              "device": {"type": "cpu", "hardware": "Test CPU"}, "load": load.fields,
              "shape": {"m": 2, "n": 2, "k": 64},
              "kernels": {"xnor": {"status": "ok", "median_ms": 1.5}, "xnor-tc": {"status": "not run: CUDA-only"}}}
    return {**record, **changes}


def test_a_record_round_trips_with_its_format_version_and_checksum(tmp_path):
    path = tmp_path / "r.json"
    write_bench_record(path, good_record())
    raw = json.loads(path.read_text())
    assert raw["format"] == BENCH_FORMAT and raw["version"] == 2 and len(raw["sha256"]) == 64
    rec = read_bench_record(path)
    assert {k: v for k, v in rec.data.items() if k not in ("format", "version", "sha256")} == good_record(
        load=rec.data["load"])
    assert rec.kind == "kernels" and rec.status == "ok" and not rec.legacy and rec.busy == raw["load"]["busy"]


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["kernels"]["xnor"].update(median_ms=0.1), "does not match its checksum"),
    (lambda r: r.pop("sha256"), "carries no checksum"),
    (lambda r: r.update(version=3), "has bench record version 3"),
])
def test_an_altered_or_unknown_record_is_refused_in_one_sentence(tmp_path, edit, message):
    path = tmp_path / "r.json"
    write_bench_record(path, good_record())
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(UnreadableBenchRecord, match=message) as e:
        read_bench_record(path)
    assert str(e.value).startswith(str(path)) and str(e.value).endswith(".") and "\n" not in str(e.value)


@pytest.mark.parametrize("changes,problem", [
    ({"load": {"cores": 2}}, "has no 'threads' of its load"),
    ({"status": "fine"}, "'status' is 'fine', not ok or failed"),
    ({"status": "failed"}, "failed but says not why"),
    ({"kernels": {"xnor": {"status": "ok"}}}, "kernel 'xnor' ran but has no median_ms"),
    ({"shape": {"m": 2}}, "has no shape {m, n, k}"),
])
def test_the_writer_refuses_a_record_outside_the_schema(tmp_path, changes, problem):
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        write_bench_record(tmp_path / "r.json", good_record(**changes))
    assert not (tmp_path / "r.json").exists()


def test_every_committed_record_reads_as_current_with_its_load_or_as_legacy_with_its_load_unknown():
    paths = sorted((REPO / "results" / "bench").glob("*.json"))
    assert paths
    for path in paths:
        rec = read_bench_record(path)
        assert rec.status == "ok", path
        if rec.legacy:
            assert rec.busy is None and rec.load is None, path
        elif rec.data.get("kind") != "cpu-peaks":  # popc_peak's own JSON carries no load
            assert rec.load is not None and rec.busy is not None, path


def test_the_report_reads_through_the_schema_and_skips_failed_or_altered_records(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    write_bench_record(bench / "good.json", good_record())
    write_bench_record(bench / "failed.json", good_record(status="failed", problem="kernels failed: xnor"))
    write_bench_record(bench / "altered.json", good_record())
    altered = json.loads((bench / "altered.json").read_text())
    altered["kernels"]["xnor"]["median_ms"] = 0.01
    (bench / "altered.json").write_text(json.dumps(altered))
    (bench / "legacy.json").write_text(json.dumps({k: v for k, v in good_record().items() if k != "load"}))
    notes = Notes()
    benches = find_benches(tmp_path, notes)
    assert sorted(r.rel for r in benches.kernels) == ["bench/good.json", "bench/legacy.json"]
    skipped = dict(notes.sorted())
    assert skipped["bench/failed.json"] == "a bench that failed (kernels failed: xnor): skipped"
    assert "does not match its checksum" in skipped["bench/altered.json"]


# ---------------------------------------------------------------------------- refused and failed

def test_a_variant_that_cannot_run_on_the_device_is_refused_when_named(tmp_path):
    res = run_cli("--model", "mnist-mlp", "--variant", "xnor,xnor-paper", "--device", "cpu", "--out", str(tmp_path))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--variant xnor-paper cannot run here: it runs on cuda only, not on cpu" in res.output.replace("\n", " ")
    with pytest.raises(Exception, match="--kernel int8 cannot run here: it runs on cpu only, not on cuda"):
        timing.select_names("xnor,int8", kernel_bench.unavailable("cuda"), "kernel", "--kernel")
    # "all" keeps what runs on the device, and refuses nothing
    assert "int8" not in timing.select_names("all", kernel_bench.unavailable("cuda"), "kernel", "--kernel")
    assert not list(tmp_path.glob("*.json"))


def test_a_shape_that_cannot_fit_is_refused_before_allocating(tmp_path):
    res = run_cli("--device", "cpu", "--kernel", "xnor", "--m", "60000", "--n", "60000", "--k", "8192",
                  "--out", str(tmp_path))
    assert res.exit_code == 2 and "Traceback" not in res.output
    text = res.output.replace("\n", " ")
    assert "a 60000 x 60000 x 8192 product needs about 54.9 GiB of cpu memory and" in text
    assert "GiB are available; choose a smaller size." in text and not list(tmp_path.glob("*.json"))
    assert timing.available_bytes(torch.device("cpu")) > 0


def test_a_kernel_that_fails_fails_the_command_and_is_recorded_as_failed(tmp_path, monkeypatch):
    def broken(ops):
        raise RuntimeError("the kernel broke")
    monkeypatch.setitem(kernel_bench.KERNELS, "cublas", kernel_bench.BenchKernel("broken", broken))
    res = run_cli("--device", "cpu", "--kernel", "xnor,cublas", "--m", "4", "--n", "4", "--k", "64", "--repeat", "3",
                  "--out", str(tmp_path))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "kernels failed: cublas (the kernel broke) (recorded as failed in" in res.output.replace("\n", " ")
    rec = read_bench_record(next(tmp_path.glob("*.json")))
    assert rec.status == "failed" and rec.problem == "kernels failed: cublas (the kernel broke)"
    assert rec.data["kernels"]["xnor"]["status"] == "ok"


SMALL = ["model.conv=[8,M,16,M]", "model.fc=[32]"]


@pytest.fixture
def small_convnets(monkeypatch):
    monkeypatch.setattr(ModelSpec, "recipe", lambda spec: load_recipe(recipes_dir() / spec.recipe_file, SMALL))


def test_a_model_variant_that_fails_fails_the_command_and_is_recorded_as_failed(tmp_path, small_convnets,
                                                                                monkeypatch):
    real = model_bench.runner

    def failing_runner(spec, name, *args):
        if name == "xnor-int8":
            raise RuntimeError("no int8 here")
        return real(spec, name, *args)

    monkeypatch.setattr(model_bench, "runner", failing_runner)
    res = run_cli("--model", "cifar10-convnet", "--variant", "xnor-int8,xnor-integer", "--device", "cpu",
                  "--repeat", "1", "--images", "4", "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "error: xnor-int8 failed (no int8 here) (recorded as failed in" in res.output.replace("\n", " ")
    rec = read_bench_record(next(tmp_path.glob("*.json")))
    assert rec.status == "failed" and rec.data["variants"]["xnor-int8"]["status"] == "failed: no int8 here"
    assert rec.data["variants"]["xnor-integer"]["status"] == "ok"


def test_an_unusable_kernel_build_folder_is_exit_4_in_one_sentence(tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    with pytest.raises(KernelBuildFolderError, match="cannot be created") as e:
        usable_build_dir(a_file / "cpu-x")
    assert e.value.exit_code == EXIT_ENVIRONMENT
    env = {**os.environ, "BNNCTL_BUILD_DIR": str(a_file), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "bnnctl", "bench", "--device", "cpu", "--kernel", "xnor", "--m", "4",
                           "--n", "4", "--k", "64", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == EXIT_ENVIRONMENT, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
    assert f"the kernel build folder {a_file}" in done.stderr.replace("\n", "")


# ---------------------------------------------------------------------------- what a person reads

def assert_fits(console: Console, rows: list[str]) -> str:
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    for name in rows:  # each row on one line: the name and its numbers together
        (line,) = [line for line in lines if line.strip().startswith(name + " ")]
        assert len(line.split()) >= 4, text
    return text


def test_the_kernel_table_fits_80_columns_and_shows_only_what_ran(tmp_path):
    result = kernel_bench.bench_kernels(["xnor", "baseline", "cublas"], 8, 8, 64, repeat=3, device="cpu",
                                        popc_peak_tbops=0.5)
    console = Console(width=80, record=True, file=io.StringIO())
    kernel_bench.print_table(result, console)
    text = assert_fits(console, ["xnor", "baseline", "cublas"])
    assert "bf16" not in text and "not run" not in text and "{" not in text


def test_the_model_table_fits_80_columns_without_json_and_progress_only_on_a_terminal(tmp_path, small_convnets):
    result = model_bench.bench_model("svhn-convnet", None, "cpu", tmp_path / "no-data", repeat=1, images=4,
                                     names=["xnor-integer", "xnor-bitplane", "torch", "torch-bf16"])
    console = Console(width=80, record=True, file=io.StringIO())
    model_bench.print_model_table(result, console)
    text = assert_fits(console, ["xnor-integer", "xnor-bitplane", "torch", "torch-bf16"])
    assert "torch-channels-last" not in text and "{" not in text and "fastest packed engine:" in text
    assert model_bench.progress_bar(Console(file=io.StringIO())) is None  # a file or a pipe: no progress
    terminal = Console(file=io.StringIO(), force_terminal=True, width=80)
    assert model_bench.progress_bar(terminal) is not None
    model_bench.bench_model("svhn-convnet", None, "cpu", tmp_path / "no-data", repeat=1, images=4,
                            names=["xnor-integer"], console=terminal)
    assert "svhn-convnet" in terminal.file.getvalue()


def test_the_model_specs_name_their_recipes_and_variants():
    assert set(SPECS) == {"mnist-mlp", "cifar10-convnet", "svhn-convnet"}
    for spec in SPECS.values():
        assert (recipes_dir() / spec.recipe_file).is_file() and spec.reference in spec.variants
        assert all(ref in spec.variants for ref in spec.ratios.values())
