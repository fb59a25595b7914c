"""`bnnctl report` on small fake results/ trees: every table cell checked against the files it came from."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bnnctl import paper
from bnnctl.cli import app
from bnnctl.recipe import Recipe, dump_recipe, load_recipe
from bnnctl.report import Run, build_report, random_unique_share, unique_filters
from bnnctl.report.summary import summarize
from bnnctl.files import atomic_torch_save
from bnnctl.runs import BEST_FILE, FORMAT_VERSION, MODEL_FORMAT, RECIPE_FILE

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
ROWS = {"tiny": "", "mnist": "BNN (Theano)", "mnist_torch7": "BNN (Torch7)", "cifar10_torch7": "BNN (Torch7)",
        "svhn": "BNN (Theano)", "cifar10": "BNN (Theano)"}


# Shipped recipes, with schedules short enough to finish here: a run of these is faithful.
SHORT_EPOCHS = {"mnist": 5, "mnist_torch7": 2}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    return short_recipes(tmp_path_factory.mktemp("recipes"))


def short_recipes(folder: Path, epochs: dict[str, int] = SHORT_EPOCHS) -> Path:
    for path in (REPO / "recipes").glob("*.yaml"):
        text = path.read_text()
        if path.stem in epochs:
            shipped = load_recipe(path).train.epochs
            assert f"  epochs: {shipped}\n" in text
            text = text.replace(f"  epochs: {shipped}\n", f"  epochs: {epochs[path.stem]}\n", 1)
        (folder / path.name).write_text(text)
    return folder


def write_run(results: Path, recipe: str, run_id: str, dataset: str, variant: str, curve: list[tuple],
              planned: int | None = None, status: str | None = None, recipes: Path | None = None,
              sets: list[str] = (), seed: int = 0) -> dict:
    """A run directory as training writes it; curve rows are (train_loss, valid_error_pct, test_error_pct).

    With ``recipes``, recipe.yaml is that folder's recipe resolved with ``sets`` (and train.epochs =
    planned), as training records it."""
    run = results / recipe / run_id
    run.mkdir(parents=True)
    planned = planned or len(curve)
    lines = ["epoch,lr,train_loss,valid_loss,valid_error_pct,test_error_pct,epoch_time_s"]
    lines += [f"{i},0.001,{loss},0.5,{valid},{test},1.5" for i, (loss, valid, test) in enumerate(curve, 1)]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    if recipes is not None:
        resolved = load_recipe(recipes / f"{recipe}.yaml", [f"train.epochs={planned}", f"seed={seed}", *sets])
        resolved = dataclasses.replace(resolved, data=dataclasses.replace(resolved.data, variant=variant))
        (run / "recipe.yaml").write_text(dump_recipe(resolved))
    best = max(range(len(curve)), key=lambda i: (-curve[i][1], i))  # '<=': the last of equal bests
    result = {
        "recipe": recipe, "reproduces": f"Table 1, {ROWS[recipe]}, {dataset}",
        "paper": {"table": "Table 1", "row": ROWS[recipe], "test_error": 1.0},
        "dataset": dataset, "variant": variant,
        "status": status or ("finished" if len(curve) == planned else "running"),
        "epochs_run": len(curve), "epochs_planned": planned, "best_epoch": best + 1,
        "best_valid_error_pct": curve[best][1], "test_error_pct": curve[best][2],
        "last_test_error_pct": curve[-1][2], "seed": seed, "wall_time_s": 1.5 * len(curve), "epoch_time_s": 1.5,
        "torch": "2.11.0", "hardware": "test CPU", "commit": "abc123",
    }
    (run / "result.json").write_text(json.dumps(result, indent=2))
    return result


KERNELS_RECORD = {
    "kind": "kernels", "date": "2026-11-27T12:00:00+00:00",
    "device": {"type": "cpu", "hardware": "Test CPU (2 threads)"}, "shape": {"m": 64, "n": 32, "k": 128},
    "kernels": {
        "xnor": {"label": "XNOR, CPU", "packed": True, "status": "ok", "median_ms": 0.5, "exact": True,
                 "including_packing_ms": 0.8, "tbops": 0.002, "x_baseline": 20.0, "x_cublas_fp32": 4.0,
                 "x_torch_bf16": 8.0},
        "xnor-paper": {"label": "XNOR, paper-style", "packed": True, "status": "not run: CUDA-only kernel"},
        "baseline": {"label": "float baseline", "packed": False, "status": "ok", "median_ms": 10.0, "exact": True,
                     "x_baseline": 1.0, "x_cublas_fp32": 0.2, "x_torch_bf16": 0.4},
        "cublas": {"label": "torch fp32 matmul", "packed": False, "status": "ok", "median_ms": 2.0, "exact": True,
                   "x_baseline": 5.0, "x_cublas_fp32": 1.0, "x_torch_bf16": 2.0},
    },
}
# A later run on the same CPU and shape that timed xnor and the fp32 matmul only: the table takes those two
# from it and the baseline from the earlier record.
NEWER_CPU_RECORD = {
    **KERNELS_RECORD, "date": "2026-11-27T14:00:00+00:00",
    "kernels": {
        "xnor": {"label": "XNOR, CPU", "packed": True, "status": "ok", "median_ms": 0.4, "exact": True,
                 "including_packing_ms": 0.6, "tbops": 0.0025, "x_cublas_fp32": 5.0},
        "xnor-paper": {"label": "XNOR, paper-style", "packed": True, "status": "not run: not selected"},
        "baseline": {"label": "float baseline", "packed": False, "status": "not run: not selected"},
        "cublas": {"label": "torch fp32 matmul", "packed": False, "status": "ok", "median_ms": 2.0, "exact": True,
                   "x_cublas_fp32": 1.0},
    },
}
MLP_RECORD = {  # as bnnctl/bench/mlp.py records it
    "kind": "mnist-mlp", "date": "2026-11-27T12:00:00+00:00", "device": {"type": "cpu", "hardware": "Test CPU"},
    "model": {"weights": "trained", "source": "results/mnist/x/best.pt", "epoch": 2},
    "variants": {
        "baseline": {"paper_row": "(a)", "label": "baseline kernel", "status": "ok", "median_ms": 700.0,
                     "test_error_pct": 1.25, "predictions_differing_from_torch": 0},
        "xnor": {"paper_row": "(b)", "label": "xnor, first layer baseline", "status": "ok", "median_ms": 100.0,
                 "test_error_pct": 1.25, "predictions_differing_from_torch": 0},
        "xnor-bitplane": {"paper_row": "(c)", "label": "xnor, bit planes", "status": "not run: CUDA-only kernel"},
        "torch": {"paper_row": "(d)", "label": "float model in torch", "status": "ok", "median_ms": 200.0,
                  "test_error_pct": 1.25, "predictions_differing_from_torch": 0},
    },
}


CONVNET_RECORD = {  # as bnnctl/bench/convnet.py records it
    "kind": "cifar10-convnet", "date": "2026-11-30T12:00:00+00:00", "device": {"type": "cpu", "hardware": "Test CPU"},
    "data": {"images": 100, "dataset": None},
    "variants": {
        "xnor-integer": {"label": "packed engine", "status": "ok", "median_ms": 50.0, "images_per_s": 2000.0,
                         "predictions_differing_from_float": 0},
        "xnor-bitplane-tc": {"label": "tensor cores", "status": "not run: CUDA-only kernel"},
        "torch": {"label": "fp32", "status": "ok", "median_ms": 400.0, "images_per_s": 250.0,
                  "predictions_differing_from_float": 0},
        "torch-bf16": {"label": "bf16", "status": "ok", "median_ms": 200.0, "images_per_s": 500.0,
                       "predictions_differing_from_float": 3},
    },
}


CPU_PEAKS_RECORD = {
    "kind": "cpu-peaks", "date": "2026-11-27T12:00:00+00:00", "hardware": "Test CPU",
    "threads": {"2": {"rows": {"fp32 FMA (registers)": {"one_thread": 90.0, "all_threads": 180.0},
                               "xor+popcount avx2 lookup": {"one_thread": 600.0, "all_threads": 1170.0}},
                      "best_popcount_over_fp32_fma": 6.5}},
}


XNOR_SHARE_RECORD = {
    "kind": "cpu-xnor-share", "date": "2026-11-30T12:00:00+00:00", "hardware": "Test CPU (2 threads)",
    "commit": "0123456789abcdef0123456789abcdef01234567+dirty", "shape": [1024, 1024, 4096], "threads": 2,
    "isas": {"avx2": {"ceiling_row": "best of xor+popcount avx2 lookup / harley-seal", "ceiling_tbops": 2.0,
                      "gemm_ms": 4.8, "gemm_tbops": 1.79, "share": 0.894, "share_min": 0.81, "share_max": 0.93}},
}


def small_convnet_recipe(tmp_path: Path) -> Recipe:
    recipe = yaml.safe_load((REPO / "recipes" / "cifar10_torch7.yaml").read_text())
    recipe["model"].update(conv=[4, "M", 6], fc=[8])
    path = tmp_path / "small_convnet.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path)


def write_best(run: Path, recipe: Recipe, conv_weights: list[torch.Tensor]) -> None:
    """A best.pt (the model record training writes) whose binary conv layers have the given weights."""
    from bnnctl.core.models import build_model

    torch.manual_seed(0)
    model = build_model(recipe.model, (3, 8, 8), 10)
    convs = [m for m in model if type(m).__name__ == "BinaryConv2d"]
    with torch.no_grad():
        for conv, w in zip(convs, conv_weights):
            conv.weight.copy_(w)
    (run / RECIPE_FILE).write_text(dump_recipe(recipe))
    atomic_torch_save({"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": recipe.to_dict(),
                       "model": model.state_dict(), "input_shape": [3, 8, 8], "num_classes": 10, "dataset": "cifar10",
                       "variant": "cifar10-jpeg", "epoch": 1, "valid_error_pct": 50.0, "test_error_pct": 50.0},
                      run / BEST_FILE)


# Conv 1 (3 -> 4): per input map, kernels [a, a, -a, b] -> 2 unique up to sign, 3 exactly.
# Conv 2 (4 -> 6): input map 0 has six copies of one kernel, the others six random ones.
def designed_conv_weights() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    a = torch.tensor([1., -1, 1, 1, 1, -1, -1, 1, 1]).reshape(3, 3)
    b = torch.tensor([1., 1, 1, -1, -1, -1, 1, 1, 1]).reshape(3, 3)
    w1 = torch.stack([torch.stack([k] * 3) for k in (a, a, -a, b)]) * 0.5  # (4, 3, 3, 3), latent not ±1
    w2 = torch.rand(6, 4, 3, 3, generator=g) * 2 - 1
    w2[:, 0] = a * 0.25
    return [w1, w2]


@pytest.fixture(scope="module")
def results(tmp_path_factory, recipes) -> Path:
    tmp_path = tmp_path_factory.mktemp("tree")
    root = tmp_path / "results"
    # Theano MNIST (5 epochs in these recipes): two seeds of the shipped recipe, a second run of seed 0, a
    # shortened run with the lowest errors, and the 784-16-10 network on 1,000 images, all epochs.
    write_run(root, "mnist", "full", "mnist", "mnist",
              [(0.5, 5.0, 5.5), (0.3, 3.0, 3.25), (0.2, 2.0, 2.5), (0.15, 2.5, 2.0), (0.1, 2.0, 2.125)],
              recipes=recipes)
    write_run(root, "mnist", "seed1", "mnist", "mnist",
              [(0.5, 5.0, 5.5), (0.3, 3.0, 3.0), (0.2, 2.5, 2.875), (0.15, 2.5, 2.0), (0.1, 2.5, 2.5)],
              recipes=recipes, seed=1)
    write_run(root, "mnist", "zz-seed0-again", "mnist", "mnist", [(0.5, 5.0, 5.5)] * 4 + [(0.1, 1.0, 1.0)],
              recipes=recipes)
    write_run(root, "mnist", "short", "mnist", "mnist", [(0.4, 4.0, 4.0), (0.2, 1.0, 1.5), (0.1, 1.5, 1.0)],
              recipes=recipes)
    write_run(root, "mnist", "tiny-net", "mnist", "mnist", [(0.2, 0.5, 0.25)] * 5, recipes=recipes,
              sets=["model.hidden=[16]", "data.limit_train=1000"])
    # Torch7 CIFAR-10 on the JPEG stand-in, interrupted after 2 of 500 epochs, with a checkpoint.
    write_run(root, "cifar10_torch7", "jpeg", "cifar10", "cifar10-jpeg", [(0.9, 80.0, 81.0), (0.8, 70.0, 71.5)],
              planned=500, status="interrupted")
    write_best(root / "cifar10_torch7" / "jpeg", small_convnet_recipe(tmp_path), designed_conv_weights())
    # A Theano CIFAR-10 run on the real data but without a checkpoint (checkpoints are git-ignored).
    write_run(root, "cifar10", "nockpt", "cifar10", "cifar10", [(0.7, 30.0, 31.0)], planned=500)
    (root / "cifar10" / "nockpt" / "recipe.yaml").write_text(dump_recipe(small_convnet_recipe(tmp_path)))
    # Torch7 MNIST (2 epochs here) with a broken metrics.csv: in Table 1, without a curve.
    write_run(root, "mnist_torch7", "badmetrics", "mnist", "mnist", [(0.3, 1.5, 1.75), (0.2, 1.25, 1.5)],
              recipes=recipes, sets=["fast.fused_step=true", "fast.int8_forward=true", "train.checkpoint_every=2"])
    (root / "mnist_torch7" / "badmetrics" / "metrics.csv").write_text("epoch,train_loss,valid_error_pct\n1,0.3,x\n")
    # A result.json whose test error is not the one metrics.csv has at the best epoch: reported, questioned.
    write_run(root, "mnist_torch7", "disagree", "mnist", "mnist", [(0.3, 2.0, 2.5)], planned=2, status="interrupted",
              recipes=recipes)
    disagree = root / "mnist_torch7" / "disagree" / "result.json"
    disagree.write_text(json.dumps({**json.loads(disagree.read_text()), "test_error_pct": 1.0}))
    # A run of a recipe that reproduces no paper cell: listed with the runs, in no Table 1 cell.
    write_run(root, "tiny", "a", "mnist", "mnist", [(0.9, 50.0, 50.0)])
    tiny = root / "tiny" / "a" / "result.json"
    tiny.write_text(json.dumps({**json.loads(tiny.read_text()), "paper": {"table": "", "row": "", "test_error": None}}))
    # Broken or unfinished runs.
    (root / "svhn" / "broken").mkdir(parents=True)
    (root / "svhn" / "broken" / "result.json").write_text('{"recipe": "svhn", "status": ')
    write_run(root, "svhn", "nofield", "svhn", "svhn", [(0.3, 3.0, 3.0)])
    nofield = root / "svhn" / "nofield" / "result.json"
    nofield.write_text(json.dumps({k: v for k, v in json.loads(nofield.read_text()).items() if k != "variant"}))
    (root / "mnist_torch7" / "starting").mkdir(parents=True)
    (root / "mnist_torch7" / "starting" / "recipe.yaml").write_text("name: mnist_torch7\n")
    # Benchmarks: one good kernels record, one MLP record, and three that must be skipped.
    bench = root / "bench"
    bench.mkdir()
    (bench / "20261127T120000-cpu-64x32x128.json").write_text(json.dumps(KERNELS_RECORD))
    (bench / "20261127T140000-cpu-64x32x128.json").write_text(json.dumps(NEWER_CPU_RECORD))
    gpu = {**KERNELS_RECORD, "date": "2026-11-27T13:00:00+00:00", "shape": {"m": 8192, "n": 8192, "k": 8192},
           "device": {"type": "cuda", "hardware": "Test GPU"}}
    (bench / "20261127T130000-test-gpu-8192x8192x8192.json").write_text(json.dumps(gpu))
    (bench / "mlp.json").write_text(json.dumps(MLP_RECORD))
    (bench / "mlp-gpu.json").write_text(json.dumps({**MLP_RECORD, "device": {"type": "cuda", "hardware": "Test GPU"}}))
    (bench / "cpu-peaks.json").write_text(json.dumps(CPU_PEAKS_RECORD))
    (bench / "convnet.json").write_text(json.dumps(CONVNET_RECORD))
    (bench / "convnet-no-variants.json").write_text(json.dumps({**CONVNET_RECORD, "variants": {}}))
    (bench / "cpu-peaks-other-layout.json").write_text(json.dumps({"kind": "cpu-peaks", "threads": {"2": [1, 2]}}))
    (bench / "xnor-share.json").write_text(json.dumps(XNOR_SHARE_RECORD))
    (bench / "xnor-share-no-isas.json").write_text(json.dumps({**XNOR_SHARE_RECORD, "isas": [1]}))
    (bench / "truncated.json").write_text('{"kind": "kernels", ')
    (bench / "future.json").write_text(json.dumps({"kind": "energy-meter", "joules": 3}))
    (bench / "mlp-other-layout.json").write_text(json.dumps({"kind": "mnist-mlp", "device": {"type": "cpu"},
                                                             "variants": [{"name": "a", "ms": 1}]}))
    return root


@pytest.fixture(scope="module")
def out(results: Path, recipes: Path) -> Path:
    """The report of the fake tree, built once for the tests that only read it."""
    folder = results.parent / "out"
    build_report(results, folder, recipes)
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def table1(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["row"], r["dataset"]): r for r in read_csv(out / "table1.csv") if r["source"] != "cited"}


def test_table1_cells_hold_only_faithful_runs_and_aggregate_seeds(results, out):
    cells = table1(out)
    assert set(cells) == {(row, d) for row in paper.OUR_ROWS for d in paper.TABLE1_DATASETS}

    # Theano MNIST: seeds 0 and 1 of the shipped recipe; the second seed-0 run is listed, not counted; the
    # shortened run and the 784-16-10 network on 1,000 images (lower errors, every epoch) are modified.
    cell = cells[("BNN (Theano)", "mnist")]
    assert (cell["runs"], cell["seeds"], cell["n"]) == ("mnist/full mnist/seed1", "0 1", "2")
    assert cell["replicate_runs"] == "mnist/zz-seed0-again"
    assert cell["ours_mean_test_error_pct"] == "2.31" and cell["ours_std_pct"] == "0.27"  # 2.125 and 2.5
    assert cell["paper_test_error_pct"] == "0.96"
    torch7 = cells[("BNN (Torch7)", "mnist")]
    assert (torch7["runs"], torch7["n"], torch7["ours_mean_test_error_pct"]) == ("mnist_torch7/badmetrics", "1", "1.50")
    assert torch7["ours_std_pct"] == "" and torch7["unfinished_runs"] == "mnist_torch7/disagree"
    for key in [("BNN (Torch7)", "cifar10"), ("BNN (Theano)", "cifar10"), ("BNN (Theano)", "svhn")]:
        assert (cells[key]["ours_mean_test_error_pct"], cells[key]["runs"], cells[key]["n"]) == ("not run", "", "0")

    cited = [r for r in read_csv(out / "table1.csv") if r["source"] == "cited"]
    expected = {(c.method, d): c.printed[d] for c in paper.TABLE1 if not c.ours for d in paper.TABLE1_DATASETS}
    assert {(r["row"], r["dataset"]): r["paper_test_error_pct"] for r in cited} == expected

    md = (out / "REPORT.md").read_text()
    assert "| **BNN (Theano)** (ours / paper) | 2.31 ± 0.27 (n=2) / 0.96 | not run / 2.80 | not run / 11.40 |" in md
    assert "| **BNN (Torch7)** (ours / paper) | 1.50 (n=1) / 1.40 | not run / 2.53 | not run / 10.15 |" in md
    assert "| Gated pooling (Lee et al., 2015) (cited) | – | 1.69 | 7.62 |" in md
    assert "cifar10-jpeg (not the original" not in md.split("## Modified runs")[0]
    behind = md.split("The runs behind the cells:")[1].split("CSV:")[0]
    assert "| BNN (Theano) | MNIST | `mnist/full` | 0 | 2.12 | 5 | full (5/5) | finished | test CPU | counted |" in behind
    assert "`mnist/zz-seed0-again` | 0 | 1.00 | 5 | full (5/5) | finished | test CPU | same seed as a counted run |" \
        in behind
    assert "`mnist_torch7/disagree` | 0 | 1.00 | 1 | 50% (1/2) | interrupted | test CPU | unfinished |" in behind

    summary = md.split("## Summary")[1].split("## Table 1")[0]
    assert "Reproduced with the shipped recipe, on the paper's data and its full schedule: BNN (Torch7) on MNIST " \
           "(n=1), BNN (Theano) on MNIST (n=2) (of the 6 Table 1 cells of the BNN rows)." in summary
    assert "- BNN (Theano) on MNIST: **2.31 ± 0.27 (n=2)** test error % (seeds 0, 1; paper: 0.96%)." in summary
    assert "`mnist_torch7/disagree` (BNN (Torch7) on MNIST, 1 of 2 epochs (50%), interrupted)" in summary
    assert "4 modified runs of these recipes" in summary

    modified = md.split("## Modified runs")[1].split("\n## ")[0]
    assert [line.split(" | ")[0] for line in modified.splitlines() if line.startswith("| `")] == [
        "| `cifar10/nockpt`", "| `cifar10_torch7/jpeg`", "| `mnist/short`", "| `mnist/tiny-net`"]
    tiny = next(line for line in modified.splitlines() if "`mnist/tiny-net`" in line)
    assert "data.limit_train: 1000 (shipped: null); model.hidden: [16] (shipped: [4096, 4096, 4096])" in tiny
    assert "train.epochs: 3 (shipped: 5)" in next(line for line in modified.splitlines() if "`mnist/short`" in line)
    jpeg = next(line for line in modified.splitlines() if "`cifar10_torch7/jpeg`" in line)
    assert 'dataset variant: "cifar10-jpeg" (shipped: "cifar10")' in jpeg
    runs = {r["run"]: r for r in read_csv(out / "runs.csv")}
    assert runs["mnist/full"]["faithful"] == "yes" and runs["mnist/tiny-net"]["faithful"] == "no"
    assert runs["tiny/a"]["differences"] == "its recipe is not a shipped one"


def test_runs_figures_and_skipped_files(results, out):
    runs = {r["run"]: r for r in read_csv(out / "runs.csv")}
    assert sorted(runs) == ["cifar10/nockpt", "cifar10_torch7/jpeg", "mnist/full", "mnist/seed1", "mnist/short",
                            "mnist/tiny-net", "mnist/zz-seed0-again", "mnist_torch7/badmetrics",
                            "mnist_torch7/disagree", "tiny/a"]
    for rel, row in runs.items():
        recorded = json.loads((results / rel / "result.json").read_text())
        assert row["status"] == recorded["status"] and row["variant"] == recorded["variant"]
        assert int(row["epochs_run"]) == recorded["epochs_run"] and int(row["best_epoch"]) == recorded["best_epoch"]
        assert row["test_error_pct"] == f"{recorded['test_error_pct']:.2f}"

    md = (out / "REPORT.md").read_text()
    assert "Runs that fill no Table 1 cell (another table, row or dataset): `tiny/a`." in md
    skipped = md.split("## Skipped or questioned files")[1]
    for path in ("svhn/broken/result.json", "svhn/nofield/result.json", "mnist_torch7/badmetrics/metrics.csv",
                 "mnist_torch7/starting", "bench/truncated.json", "bench/future.json", "bench/mlp-other-layout.json"):
        assert f"`{path}`" in skipped, path
    assert "has no 'variant'" in skipped and "unknown kind 'energy-meter'" in skipped
    assert "`mnist_torch7/disagree/result.json`: test error 1.0 differs from metrics.csv's 2.5 at epoch 1" in skipped

    # Figure 1: one PNG per variant with curves, CIFAR-10 first; the broken metrics.csv has none.
    pngs = sorted(p.name for p in out.glob("figure1_*.png"))
    assert pngs == ["figure1_cifar10-jpeg.png", "figure1_cifar10.png", "figure1_mnist.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    order = [md.index(f"({p})") for p in ("figure1_cifar10.png", "figure1_cifar10-jpeg.png", "figure1_mnist.png")]
    assert order == sorted(order)
    assert "`mnist_torch7/badmetrics` (" not in md.split("## Figure 1")[1].split("## Kernel")[0]

    # The CPU ceilings: every rate of the record, and its ratio; a record in another layout is skipped.
    ceilings = md.split("### CPU instruction ceilings")[1].split("\n## ")[0]
    for line in ("| `bench/cpu-peaks.json` | Test CPU | 2 | fp32 FMA (registers) | 180 |  |",
                 "| `bench/cpu-peaks.json` | Test CPU | 2 | xor+popcount avx2 lookup | 1170 |  |",
                 "| `bench/cpu-peaks.json` | Test CPU | 2 | best popcount / fp32 FMA |  | 6.5x |"):
        assert line in ceilings, line
    assert "`bench/cpu-peaks-other-layout.json`: cpu-peaks record in a layout this report does not know" in skipped
    assert "bench/cpu-peaks.json" not in skipped

    # The paired GEMM shares: one row per instruction set, the commit kept with its +dirty mark.
    shares = md.split("### CPU XNOR GEMM against its instruction ceiling")[1].split("\n## ")[0]
    assert ("| `bench/xnor-share.json` | Test CPU (2 threads) | 0123456789ab+dirty | 1024 x 1024 x 4096 | avx2 | "
            "best of xor+popcount avx2 lookup / harley-seal | 2.00 | 4.80 | 1.79 | 89% (81-93%) |") in shares
    assert "`bench/xnor-share-no-isas.json`: cpu-xnor-share record in a layout this report does not know" in skipped


def test_kernel_tables_match_the_bench_records(results, out):
    all_rows = read_csv(out / "kernels.csv")
    # One row per kernel that ran, per device and shape: the not-run entries have none.
    assert [(r["device"], r["kernel"]) for r in all_rows] == \
        [("Test CPU (2 threads) (cpu)", k) for k in ("xnor", "baseline", "cublas")] \
        + [("Test GPU (cuda)", k) for k in ("xnor", "baseline", "cublas")]
    rows = {r["kernel"]: r for r in all_rows if r["device"] == "Test CPU (2 threads) (cpu)"}
    gpu = {r["kernel"]: r for r in all_rows if r["device"] == "Test GPU (cuda)"}
    # Each row from the latest record in which that kernel ran.
    newer, older = "bench/20261127T140000-cpu-64x32x128.json", "bench/20261127T120000-cpu-64x32x128.json"
    assert {k: r["record"] for k, r in rows.items()} == {"xnor": newer, "baseline": older, "cublas": newer}
    assert rows["xnor"]["date"] == NEWER_CPU_RECORD["date"]
    for name, row in rows.items():
        entry = (NEWER_CPU_RECORD if row["record"] == newer else KERNELS_RECORD)["kernels"][name]
        assert row["shape"] == "64x32x128" and float(row["median_ms"]) == entry["median_ms"]
        assert float(row["x_fp32_matmul"]) == entry["x_cublas_fp32"]
        assert row["x_baseline"] == ("" if "x_baseline" not in entry else f"{entry['x_baseline']:g}")
    for name, row in gpu.items():
        entry = KERNELS_RECORD["kernels"][name]
        assert row["shape"] == "8192x8192x8192" and float(row["median_ms"]) == entry["median_ms"]
        assert float(row["x_baseline"]) == entry["x_baseline"]
    # The paper's ratios (GTX750) stand beside GPU records only.
    assert (gpu["xnor"]["paper_x_baseline"], gpu["xnor"]["paper_x_cublas"]) == ("23.0", "3.4")
    assert gpu["baseline"]["paper_x_baseline"] == ""
    assert rows["xnor"]["paper_x_baseline"] == rows["xnor"]["paper_x_cublas"] == ""

    md = (out / "REPORT.md").read_text()
    table = md.split("## Kernel timings")[1].split("### MNIST MLP")[0]
    assert "not run" not in table and "xnor-paper" not in table
    assert "| Test CPU (2 threads) (cpu) | 64x32x128 | xnor: XNOR, CPU | 0.400 | 0.600 |  |  | 5.00 |  |  |  | yes |" \
        in table
    assert "| Test CPU (2 threads) (cpu) | 64x32x128 | baseline: float baseline | 10.000 |  | 1.00 |  | 0.20 |  " \
           "|  |  | yes |" in table
    assert "| Test GPU (cuda) | 8192x8192x8192 | xnor: XNOR, CPU | 0.500 | 0.800 | 20.00 | 23x | 4.00 | 3.4x |  |  " \
        "| yes |" \
        in table

    mlp = read_csv(out / "mnist_mlp.csv")
    # rows that were not run (not selected, or a kernel of another device) say nothing and are left out
    assert [r["device"] for r in mlp] == ["Test CPU (cpu)"] * 3 + ["Test GPU (cuda)"] * 3
    cpu = [(r["variant"], r["median_ms"], r["x_baseline"], r["x_torch"], r["x_best_torch"], r["test_error_pct"],
            r["status"], r["paper_x_baseline"]) for r in mlp[:3]]
    # Speed-ups from the recorded times: (a) 700 ms, (b) 100 ms, (d) 200 ms, the only (so the best) torch variant.
    assert cpu == [("baseline", "700", "1", "0.2857", "0.2857", "1.25", "ok", ""),
                   ("xnor", "100", "7", "2", "2", "1.25", "ok", ""),
                   ("torch", "200", "3.5", "1", "1", "1.25", "ok", "")]
    assert [r["paper_x_baseline"] for r in mlp[3:]] == ["", "7.0", ""]  # the paper's 7x: (b), on a GPU
    assert all(r["model"] == "trained weights from `results/mnist/x/best.pt`, epoch 2" for r in mlp)


def test_figure3_draws_the_papers_three_bars_beside_its_ratios(results, out):
    names = sorted(p.name for p in out.glob("figure3_*.png"))
    assert names == ["figure3_test-cpu-2-threads-cpu.png", "figure3_test-cpu-cpu.png", "figure3_test-gpu-cuda.png"]
    md = (out / "REPORT.md").read_text().split("## Figure 3")[1].split("\n## ")[0]
    gpu = md.split("### Test GPU (cuda)")[1].split("###")[0]
    # The 8192^3 GPU record: baseline 10 ms, cuBLAS 2 ms, XNOR 0.5 ms; the paper's 23x and 3.4x as relative times.
    for line in ("| matrix product | baseline kernel | 10 | 1 | 1 |  |",
                 "| matrix product | cuBLAS | 2 | 0.2 | 0.148 |  |",
                 "| matrix product | XNOR kernel | 0.5 | 0.05 | 0.0435 |  |",
                 "| MNIST MLP | baseline kernel (a) | 700 | 1 | 1 | 1.25 |",
                 "| MNIST MLP | cuBLAS (d) | 200 | 0.286 |  | 1.25 |",
                 "| MNIST MLP | XNOR kernel (b) | 100 | 0.143 | 0.143 | 1.25 |"):
        assert line in gpu, line
    # The CPU counterpart: torch fp32, torch's fastest exact product and the XNOR kernel, from the newest record
    # holding all three; no paper column (the paper has no CPU figure).
    cpu = md.split("### Test CPU (2 threads) (cpu)")[1].split("###")[0]
    assert "| matrix product | torch fp32 | 2 | 1 |  |  |" in cpu
    assert "| matrix product | XNOR kernel | 0.4 | 0.2 |  |  |" in cpu
    assert "bench/20261127T140000-cpu-64x32x128.json" in cpu


def test_random_weight_benches_show_no_test_error(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    (results / "bench").mkdir(parents=True)
    random = {**MLP_RECORD, "model": {"weights": "random (seed 0): says nothing about accuracy"}}
    (results / "bench" / "mlp.json").write_text(json.dumps(random))
    build_report(results, out)
    rows = read_csv(out / "mnist_mlp.csv")
    assert rows and all(r["test_error_pct"] == "" for r in rows)
    assert {r["model"] for r in rows} == {"random weights (no trained model): test errors not shown"}
    md = (out / "REPORT.md").read_text()
    assert "accuracy weights" not in md and "| 1.25 |" not in md


def test_convnet_bench_records_get_their_own_table(out):
    rows = read_csv(out / "convnets.csv")
    assert [(r["variant"], r["images_per_s"], r["x_torch_fp32"], r["x_best_torch"],
             r["predictions_differing_from_float"]) for r in rows] == [
        ("xnor-integer", "2000", "8", "4", "0"), ("torch", "250", "1", "0.5", "0"), ("torch-bf16", "500", "2", "1", "3")]
    md = (out / "REPORT.md").read_text()
    assert "### The ConvNets on packed bits" in md and "| xnor-integer: packed engine | 2,000 | 8.00 | 4.00 | 0 |" in md
    assert "convnet-no-variants.json" in md.split("## Skipped or questioned files")[1]


def test_memory_and_energy_from_the_model_definitions(results, out):
    rows = {r["recipe"]: r for r in read_csv(out / "memory_energy.csv")}
    assert set(rows) == {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    mnist, s = rows["mnist"], summarize("mnist")
    assert int(mnist["binary_weights"]) == 36_806_656 and int(mnist["macs_binary"]) == 33_595_392
    assert int(mnist["bits_bnn"]) == s.total("bnn_bits") and int(mnist["bits_float32"]) == s.total("float_bits")
    # By hand: BNN arithmetic = XNOR MACs x 0.03 pJ + first-layer MACs x 0.1 pJ; float32 = all MACs x (3.7 + 0.9).
    assert float(mnist["arithmetic_uj_bnn"]) == pytest.approx((33_595_392 * 0.03 + 3_211_264 * 0.1) * 1e-6, rel=1e-5)
    assert float(mnist["arithmetic_uj_float32"]) == pytest.approx(36_806_656 * 4.6e-6, rel=1e-5)
    # 4.6 MiB of BNN values do not fit the 1M memory: DRAM, 1.3 to 2.6 nJ per 64-bit access.
    assert mnist["memory_bnn"] == "DRAM"
    accesses = math.ceil(s.total("bnn_bits") / 64)
    assert float(mnist["memory_uj_low_bnn"]) == pytest.approx(accesses * 1300e-6, rel=1e-5)
    assert float(mnist["memory_uj_high_bnn"]) == pytest.approx(accesses * 2600e-6, rel=1e-5)
    assert rows["svhn"]["memory_bnn"] == "1M cache"  # 0.82 MiB
    constants = {r["operation"]: r for r in read_csv(out / "energy_constants.csv")}
    assert float(constants["float32 mult"]["pj"]) == 3.7 and float(constants["64-bit access, DRAM"]["pj_high"]) == 2600
    assert all("Table 2" in r["source"] or "Table 3" in r["source"] for r in constants.values())


def test_unique_filters_by_hand():
    up_to_sign, exact = unique_filters(designed_conv_weights()[0])
    assert (up_to_sign, exact) == (3 * 2, 3 * 3)  # per input map: {a, b} up to sign, {a, -a, b} exactly
    zeros = torch.zeros(2, 1, 3, 3)  # sign(0) = +1: two equal all-plus kernels
    assert unique_filters(zeros) == (1, 1)
    # Random kernels: the expected share for 1 kernel is 1, and falls as more share 256 classes.
    assert random_unique_share(1, 9) == 1.0
    assert random_unique_share(512, 9) == pytest.approx(256 * (1 - (255 / 256) ** 512) / 512)


def test_filter_repetition_from_best_pt(results, out):
    rows = read_csv(out / "filter_repetition.csv")
    assert [r["run"] for r in rows] == ["cifar10_torch7/jpeg"] * 2
    conv1, conv2 = rows
    assert (conv1["in_channels"], conv1["out_channels"], conv1["input"]) == ("3", "4", "real")
    assert (conv1["kernels_2d"], conv1["unique_up_to_sign"], conv1["unique_exact"]) == ("12", "6", "9")
    assert conv1["unique_pct"] == "50.00"
    # Conv 2: map 0 holds one kernel six times; the 18 random kernels of maps 1-3 are counted directly.
    w2 = designed_conv_weights()[1]
    expected = 1 + unique_filters(w2[:, 1:])[0]
    assert conv2["input"] == "±1" and int(conv2["unique_up_to_sign"]) == expected
    ops = 6 * 4 * 4 * 4 * 9  # out x in x (4x4 positions) x 3x3
    assert int(conv2["xnor_popcount_ops"]) == ops
    assert int(conv2["ops_with_dedup"]) == expected * 9 * 16
    assert int(conv2["ops_saved"]) == ops - expected * 9 * 16
    md = (out / "REPORT.md").read_text().split("## Filter repetition")[1].split("## Recorded runs")[0]
    assert "No checkpoint" in md and "`cifar10/nockpt`" in md and "42%" in md


def test_report_twice_gives_identical_files(results, recipes, out, tmp_path):
    first, second = out, tmp_path / "second"
    build_report(results, second, recipes)
    build_report(results, second, recipes)  # again into the same folder
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert "REPORT.md" in names and "figure3_test-gpu-cuda.png" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_report_cli(tmp_path):
    results, out = tmp_path / "results", tmp_path / "cli-out"
    write_run(results, "mnist", "one", "mnist", "mnist", [(0.5, 5.0, 5.5)])
    (results / "mnist" / "two").mkdir()
    (results / "mnist" / "two" / "result.json").write_text("[]")
    done = runner.invoke(app, ["report", "--results", str(results), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "REPORT.md").is_file() and (out / "figure1_mnist.png").is_file()
    assert "mnist/two/result.json: JSON is not an object" in done.output
    missing = runner.invoke(app, ["report", "--results", str(tmp_path / "none"), "--out", str(out)])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_the_report_replaces_and_removes_only_its_own_files(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    write_run(results, "mnist", "one", "mnist", "mnist", [(0.5, 5.0, 5.5)])
    write_run(results, "svhn", "two", "svhn", "svhn-synthetic", [(0.5, 5.0, 5.5)])
    build_report(results, out)
    assert (out / "figure1_svhn-synthetic.png").is_file()
    # A user's files beside the report: a run's metrics.csv, notes, a figure of their own.
    mine = {"metrics.csv": "epoch,train_loss\n1,0.5\n", "notes.md": "mine", "figure1_old.png": "not the report's"}
    for name, text in mine.items():
        (out / name).write_text(text)
    import shutil
    shutil.rmtree(results / "svhn")
    build_report(results, out)
    assert not (out / "figure1_svhn-synthetic.png").exists()  # the report's own figure of a run now gone
    assert {name: (out / name).read_text() for name in mine} == mine
    assert not list(out.glob(".report-*"))  # no staging folder left behind

    # A list of files that names a file the report did not write (or one changed since) removes nothing.
    manifest = json.loads((out / ".bnnctl-report.json").read_text())
    manifest["files"]["notes.md"] = "0" * 64
    (out / ".bnnctl-report.json").write_text(json.dumps(manifest))
    build_report(results, out)
    assert (out / "notes.md").read_text() == "mine"

    # A file of the user's where the report would write is refused before anything changes.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (out / "runs.csv").unlink()
    (out / "runs.csv").write_text("my own table\n")
    manifest = json.loads((out / ".bnnctl-report.json").read_text())
    del manifest["files"]["runs.csv"]
    (out / ".bnnctl-report.json").write_text(json.dumps(manifest))
    refused = runner.invoke(app, ["report", "--results", str(results), "--out", str(out)])
    assert refused.exit_code == 2 and "runs.csv was not written by bnnctl report" in refused.output
    assert (out / "runs.csv").read_text() == "my own table\n"
    assert (out / "REPORT.md").read_bytes() == before["REPORT.md"]
    (out / ".bnnctl-report.json").write_text("{not json")
    damaged = runner.invoke(app, ["report", "--results", str(results), "--out", str(out)])
    assert damaged.exit_code == 2 and "is not a bnnctl report's list of its files" in damaged.output


def with_epochs(epochs: int) -> Recipe:
    shipped = load_recipe(REPO / "recipes" / "mnist.yaml")
    return dataclasses.replace(shipped, train=dataclasses.replace(shipped.train, epochs=epochs))


def test_schedule_is_the_share_of_the_recipes_epochs():
    from bnnctl.report.table1 import schedule, schedule_words

    recipes = {"mnist": with_epochs(1000)}

    def run(done, status="finished", recipe="mnist"):
        return Run("r", Path("r"), {"recipe": recipe, "status": status, "epochs_run": done, "epochs_planned": done})
    assert (schedule(run(1000), recipes), schedule_words(run(1000), recipes)) == \
        ("full (1000/1000)", "full schedule (1000 epochs)")
    assert (schedule(run(20), recipes), schedule_words(run(20), recipes)) == ("2% (20/1000)", "20 of 1000 epochs (2%)")
    assert schedule(run(999), recipes) == "99.9% (999/1000)"
    # A shortened run never reads 100%.
    assert schedule(run(1999), {"mnist": with_epochs(2000)}) == "99.9% (1999/2000)"
    assert schedule_words(run(1200), recipes) == "1200 epochs, more than the recipe's 1000"
    assert schedule_words(run(3, "interrupted"), recipes) == "3 of 1000 epochs (0.3%), interrupted"
    assert schedule(run(5, recipe="tiny"), recipes) == "5 epochs (recipe not shipped)"


def test_a_cpu_xnor_row_shows_its_share_of_its_own_and_the_best_ceiling():
    from bnnctl.report.kernels import _ceiling_cell
    assert _ceiling_cell({"isa": "avx2", "share_of_isa_ceiling": 0.874, "share_of_popc_ceiling": 0.31}) == \
        "87% (avx2); 31% (best)"
    assert _ceiling_cell({"share_of_popc_ceiling": 0.5}) == "50% (best)" and _ceiling_cell({}) == ""


def _load(busy: bool) -> dict:
    return {"cores": 2, "threads": 2, "on_cpu": True, "loadavg_1min_before": 1.9 if busy else 0.05,
            "loadavg_1min_after": 2.0 if busy else 0.1, "wall_s": 3.0, "cpu_s": 2.0 if busy else 5.9,
            "cpu_per_wall": 0.67 if busy else 1.97, "busy": busy,
            "busy_reason": "load average 1.90 before the run" if busy else None}


def test_a_busy_record_is_marked_and_never_preferred_over_a_quiet_one(tmp_path):
    from bnnctl.bench_records import write_bench_record

    results, out = tmp_path / "results", tmp_path / "out"
    bench = results / "bench"
    bench.mkdir(parents=True)
    quiet = {**KERNELS_RECORD, "status": "ok", "command": "bnnctl bench", "load": _load(False),
             "date": "2026-12-01T12:00:00+00:00", "device": {"type": "cuda", "hardware": "Test GPU"}}
    # Newer, busy, and 10x slower on xnor: neither the table nor Figure 3 may take it over the quiet one.
    busy_kernels = {**quiet["kernels"], "xnor": {**quiet["kernels"]["xnor"], "median_ms": 5.0},
                    "bf16": {"label": "torch bf16", "packed": False, "status": "ok", "median_ms": 1.0, "exact": True}}
    busy = {**quiet, "date": "2026-12-02T12:00:00+00:00", "load": _load(True), "kernels": busy_kernels}
    write_bench_record(bench / "quiet.json", quiet)
    write_bench_record(bench / "busy.json", busy)
    build_report(results, out)
    rows = {r["kernel"]: r for r in read_csv(out / "kernels.csv")}
    assert (rows["xnor"]["record"], rows["xnor"]["median_ms"], rows["xnor"]["load"]) == ("bench/quiet.json", "0.5",
                                                                                          "quiet")
    # A kernel only the busy record timed is shown, marked.
    assert (rows["bf16"]["record"], rows["bf16"]["load"]) == ("bench/busy.json",
                                                               "busy: load average 1.90 before the run")
    md = (out / "REPORT.md").read_text()
    figure3 = md.split("## Figure 3")[1]
    assert "| matrix product | XNOR kernel | 0.5 | 0.05 |" in figure3
    assert "`bench/quiet.json` (64x32x128; load: quiet)" in figure3


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_committed_report_is_what_bnnctl_report_writes_from_the_committed_record(tmp_path):
    """A fresh clone's `bnnctl report` rewrites results/report as committed: every table and sentence byte for
    byte, every figure at its size (its pixels depend on the installed matplotlib and FreeType)."""
    committed = REPO / "results" / "report"
    listed = json.loads((committed / ".bnnctl-report.json").read_text())["files"]
    build_report(REPO / "results", tmp_path / "out")
    fresh = tmp_path / "out"
    assert sorted(json.loads((fresh / ".bnnctl-report.json").read_text())["files"]) == sorted(listed)
    for name in listed:
        ours, theirs = (fresh / name).read_bytes(), (committed / name).read_bytes()
        if name.endswith(".png"):
            assert _png_size(ours) == _png_size(theirs), name
        else:
            assert ours == theirs, f"{name} differs from what the committed record gives: run `bnnctl report`"
