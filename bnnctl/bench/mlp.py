"""``bnnctl bench --model mnist-mlp``: the right half of the paper's Figure 3.

The paper runs its MNIST MLP (784-4096-4096-4096-10) on the 10,000 test images with every layer on
an unoptimised float kernel, then with its XNOR kernel for the binary layers (the first layer stays
on the float kernel), and reports the XNOR run 7x faster at the same accuracy (GTX 750). Here, on
today's hardware, each variant runs the whole test set from 8-bit images on the device to predicted
classes:

  (a) baseline        every layer on the paper's float baseline kernel (+/-1 floats);
  (b) xnor            XNOR kernels on packed bits, first layer on the baseline kernel (the paper's setup);
  (c) xnor-bitplane   XNOR kernels, first layer on the 8 bit planes of the inputs (Algorithm 5);
  (c2) xnor-integer   XNOR kernels, first layer as exact integers on torch's fp32 matmul;
  (c3) xnor-int8      XNOR kernels, first layer as exact integers on torch's int8 matmul (inputs less 128);
  (d) torch           the float model in torch (cuBLAS with TF32 off / oneDNN), fp32;
      torch-bf16      the same model in bfloat16 (oneDNN with AVX512-BF16 or AMX on a CPU);
      torch-int8      the same model with the binary hidden layers on torch's int8 matmul
                      (``torch._int_mm`` on +-1 bytes, exact; VNNI or AMX int8 on a CPU).

(a)-(c) compute the same integers, so their predictions, and test errors, must be equal, and equal to
(d)'s: the command fails otherwise. The bf16 model rounds its sums, so its differences from (d) are
recorded, not checked; int8 is exact. The record names the fastest torch variant ("best stock path") and
each engine variant's speed-up over it. On CUDA the other XNOR kernels of ``kernels.xnor_gemm`` are timed
too, as extra rows.

The model is the newest finished MNIST run under ``results/mnist*/`` with the paper's architecture
(its ``best.pt``, else its ``model.bnnx`` export: checkpoints are git-ignored and may be absent);
without one, random weights (seed 0) with BatchNorm statistics from one batch of random images (see
``bench.models``), and the error column says nothing about accuracy. Only models trained on 8-bit images
scaled to [-1, 1] (preprocess: scale) are benched: the variants all start from those images. Without the
MNIST files, 10,000 random 8-bit images stand in and the error column is not a test error either.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import kernels, paper
from ..checkpoints import load_model
from ..core.models import build_model
from ..data import MNIST_FILES, data_root, scale_to_pm1
from ..errors import UserError
from ..infer.engine import FIRST_LAYERS, PackedEngine
from ..infer.bnnx import EXPORT_SUFFIX, load_export
from ..infer.exported import UINT8_SCALE, ExportedModel, input_encoding
from ..infer.float_model import float_model_from_export
from ..infer.fold import export_model
from ..provenance import resolve_device
from ..recipe import Recipe, load_recipe, recipes_dir
from .models import CALIBRATION_IMAGES, SEED, calibrate_norms, frozen_float_model, int8_binary_layers
from .timing import check_arguments, header, parse_names, record, time_model_passes

MODELS = {"mnist-mlp": "mnist.yaml"}  # --model name -> the recipe whose architecture it is
IMAGES = 10_000
BATCH = {"cuda": 10_000, "cpu": 1_000}
BUDGET_S = 20.0  # seconds per variant for all timing rounds together; the slow CPU baseline gets one round


@dataclass(frozen=True)
class Variant:
    paper_row: str
    label: str
    first_layer: str | None = None  # None: the torch float model
    hidden: str = "xnor"
    xnor_impl: str = "tuned"
    devices: tuple[str, ...] = ("cpu", "cuda")
    torch_kind: str = "fp32"  # torch variants: fp32 | bf16 | int8


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("(a)", "every layer on the float baseline kernel", "float", "float"),
    "xnor": Variant("(b)", "XNOR kernels, first layer on the float baseline kernel (the paper's setup)", "float"),
    "xnor-bitplane": Variant("(c)", "XNOR kernels, first layer on the 8 bit planes (Algorithm 5)", "bitplane"),
    "xnor-integer": Variant("(c2)", f"XNOR kernels, first layer: {FIRST_LAYERS['integer']}", "integer"),
    "xnor-int8": Variant("(c3)", f"XNOR kernels, first layer: {FIRST_LAYERS['int8']}", "int8"),
    "torch": Variant("(d)", "the float model in torch (cuBLAS fp32 with TF32 off / oneDNN)"),
    "torch-bf16": Variant("(d)", "the float model in torch, bfloat16", torch_kind="bf16"),
    "torch-int8": Variant("(d)", "the float model in torch, binary hidden layers on torch._int_mm (int8 +-1, exact)",
                          torch_kind="int8"),
    "xnor-paper": Variant("(b)", "as (b), XNOR on the paper-style 16x16 tiled kernel", "float", xnor_impl="paper",
                          devices=("cuda",)),
    "xnor-bitplane-csa": Variant("(c)", "as (c), XNOR on the carry-save popcount kernel", "bitplane",
                                 xnor_impl="csa", devices=("cuda",)),
    "xnor-bitplane-tc": Variant("(c)", "as (c), XNOR on the tensor-core kernel", "bitplane", xnor_impl="tc",
                                devices=("cuda",)),
}
SAME_INTEGERS = ("baseline", "xnor", "xnor-bitplane", "xnor-integer", "xnor-int8")  # (a)-(c): equal predictions
TORCH_VARIANTS = ("torch", "torch-bf16", "torch-int8")
EXACT_TORCH = ("torch", "torch-int8")  # compute what (a)-(c) compute: predictions must agree
INPUT_SHAPE = (1, 28, 28)


# ---------------------------------------------------------------------------- model and data

def _architecture(recipe: Recipe) -> tuple:
    m = recipe.model
    return m.arch, tuple(m.hidden) if m.arch == "mlp" else None


def find_model(results: Path, model_name: str) -> Path | None:
    """Newest run under results/mnist*/ with the named model's architecture that has best.pt or an
    export; finished runs first."""
    wanted = _architecture(load_recipe(recipes_dir() / MODELS[model_name]))
    found = []
    for run in results.glob("mnist*/*/"):
        files = [run / "best.pt", run / f"model{EXPORT_SUFFIX}"]
        present = [f for f in files if f.is_file()]
        if not present or not (run / "recipe.yaml").is_file():
            continue
        try:
            same = _architecture(load_recipe(run / "recipe.yaml")) == wanted
            status = json.loads((run / "result.json").read_text()).get("status")
        except (UserError, OSError, ValueError):
            continue
        if same:
            found.append((status == "finished", present[0].stat().st_mtime, present[0]))
    return max(found)[2] if found else None


def _model_path(run: Path | None, results: Path, model_name: str) -> Path | None:
    if run is None:
        return find_model(results, model_name)
    if not run.is_dir():
        return run
    for candidate in (run / "best.pt", run / f"model{EXPORT_SUFFIX}"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{run} holds neither best.pt nor model{EXPORT_SUFFIX}.")


def _check_scaled_inputs(encoding: str, path: Path) -> None:
    if encoding != UINT8_SCALE:
        raise UserError(f"{path} was trained on standardized or other float inputs; the mnist-mlp bench runs models "
                        "trained on 8-bit images scaled to [-1, 1] (preprocess: scale), as the Theano recipe is.")


def load_bench_model(path: Path | None, model_name: str) -> tuple[ExportedModel, nn.Module, dict]:
    """(export, float model, description) from best.pt, an export file, or random weights."""
    if path is not None and path.suffix == EXPORT_SUFFIX:
        exported = load_export(path)
        _check_scaled_inputs(exported.input_encoding, path)
        return exported, float_model_from_export(exported), {
            "source": str(path), "weights": "trained", "epoch": exported.info.get("epoch"),
            "recorded_test_error_pct": exported.info.get("test_error_pct"),
            "torch_model": "rebuilt from the export: +/-1 fp32 weights, thresholds in place of BN + sign"}
    if path is not None:
        record, model, recorded = load_model(path)
        _check_scaled_inputs(input_encoding(record.get("recipe", {})), path)
        return export_model(record, model), model, {
            "source": str(path), "weights": "trained", "run_status": recorded.get("status"), "epoch": record.get("epoch"),
            "recorded_test_error_pct": record.get("test_error_pct"), "torch_model": "the trained float model"}
    recipe = load_recipe(recipes_dir() / MODELS[model_name])
    torch.manual_seed(SEED)
    model = build_model(recipe.model, INPUT_SHAPE, 10)
    calibrate_norms(model, INPUT_SHAPE)
    record = {"recipe": recipe.to_dict(), "input_shape": list(INPUT_SHAPE), "num_classes": 10}
    return export_model(record, model), model, {
        "source": None, "weights": f"random (seed {SEED}; BN statistics from {CALIBRATION_IMAGES} random images; no "
                                   "trained run recorded): the error column says nothing about accuracy",
        "epoch": None, "recorded_test_error_pct": None, "torch_model": "the float model, random weights"}


def load_test_images(data_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """MNIST's 10,000 test images and labels, or random 8-bit images (labels None) when absent."""
    root = data_root(data_dir)
    raw = root / "MNIST" / "raw"
    if all((raw / name).is_file() for name in MNIST_FILES.values()):
        from ..data import load_mnist
        data = load_mnist({"source": "auto", "npz": None}, root)
        return torch.from_numpy(data.x_test.copy()), torch.from_numpy(data.y_test.copy()), "MNIST test set"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (IMAGES, 1, 28, 28), generator=g, dtype=torch.uint8)
    return x, None, f"10,000 random 8-bit images (no MNIST under {raw}): the error column is not a test error"


# ---------------------------------------------------------------------------- the timed variants

def _runner(name: str, exported: ExportedModel, float_model: nn.Module, device: torch.device):
    """A function from one batch of 8-bit images (on the device) to predicted classes."""
    v = VARIANTS[name]
    if v.first_layer is None:
        model = frozen_float_model(float_model) if isinstance(float_model, nn.Sequential) else float_model
        dtype = torch.bfloat16 if v.torch_kind == "bf16" else torch.float32
        if v.torch_kind == "int8":
            model = int8_binary_layers(model)
        model = copy.deepcopy(model).to(device=device, dtype=dtype) if dtype != torch.float32 else model.to(device)
        return lambda xb: model(scale_to_pm1(xb).to(dtype)).argmax(1)
    engine = PackedEngine(exported, device, first_layer=v.first_layer, hidden=v.hidden, xnor_impl=v.xnor_impl)
    return lambda xb: engine.logits(xb).argmax(1)


def bench_model(model_name: str, run: Path | None, device: str, data_dir: Path | None, repeat: int,
                results: Path = Path("results"), command: str = "", console: Console | None = None,
                limit: int | None = None, names: list[str] | None = None) -> dict:
    """The bench record (see ``run_model_bench``) of the named variants (default all); ``limit`` keeps
    the first images only (tests)."""
    if model_name not in MODELS:
        raise UserError(f"unknown --model {model_name!r}; choose {', '.join(MODELS)}.")
    dev = resolve_device(device)
    if dev.type == "cuda" and not kernels.available()["cuda"]:
        raise UserError("the CUDA kernels are not available on this machine, so there is nothing to bench on the GPU.")
    say = console.print if console else (lambda *a, **kw: None)
    path = _model_path(run, results, model_name)
    exported, float_model, model_info = load_bench_model(path, model_name)
    x, y, data_note = load_test_images(data_dir)
    if limit is not None:
        x, y = x[:limit], None if y is None else y[:limit]
    x = x.to(dev)
    batch = BATCH[dev.type]
    say(f"bench {model_name}: {len(x)} images ({data_note}), model {model_info['source'] or 'random weights'}, "
        f"{dev.type}, batches of {batch}")
    variants: dict[str, dict] = {}
    for name, v in VARIANTS.items():
        entry = {"paper_row": v.paper_row, "label": v.label, "xnor_impl": v.xnor_impl if v.first_layer else None}
        variants[name] = entry
        if names is not None and name not in names:
            entry["status"] = "not run: not selected"
        elif dev.type not in v.devices:
            entry["status"] = "not run: CUDA-only kernel"
    predictions = time_model_passes(variants, lambda name: _runner(name, exported, float_model, dev), x, batch,
                                    dev, repeat, BUDGET_S, say)
    same = _add_comparisons(variants, predictions, y)
    return {
        **header("mnist-mlp", command, dev),
        "model": {"name": model_name, "architecture": _widths(exported), **model_info},
        "data": {"images": len(x), "source": data_note}, "batch_size": batch, "repeat": repeat,
        "variants": variants, "targets": _targets(variants, same, dev.type),
        "paper": {"x_baseline": paper.kernel_ratio("mlp_xnor_vs_baseline"),
                  "claim": next(r.claim for r in paper.KERNEL_RATIOS if r.key == "mlp_xnor_vs_baseline")},
    }


def _widths(exported: ExportedModel) -> str:
    return "-".join(str(w) for w in [exported.layers[0].fan_in] + [layer.out_features for layer in exported.layers])


def _add_comparisons(variants: dict, predictions: dict, labels: torch.Tensor | None) -> bool:
    """Test errors, speed-ups and disagreements with (d); whether every engine variant that ran
    predicted exactly the same classes (they compute the same integers)."""
    reference = predictions.get("torch")
    ms = {name: e["median_ms"] for name, e in variants.items() if e["status"] == "ok"}
    best = best_torch(variants)
    for name, e in variants.items():
        if e["status"] != "ok":
            continue
        pred = predictions[name]
        e["test_error_pct"] = None if labels is None else 100.0 * (pred != labels).sum().item() / len(labels)
        e["predictions_differing_from_torch"] = None if reference is None else int((pred != reference).sum())
        e["x_baseline"] = ms["baseline"] / e["median_ms"] if "baseline" in ms else None
        e["x_torch"] = ms["torch"] / e["median_ms"] if "torch" in ms else None
        e["x_best_torch"] = ms[best] / e["median_ms"] if best else None
    exact = [p for name, p in predictions.items() if name not in TORCH_VARIANTS or name in EXACT_TORCH]
    return all(torch.equal(p, exact[0]) for p in exact)


def best_torch(variants: dict) -> str | None:
    """The fastest torch variant that ran: the best stock path on this device."""
    ran = [n for n in TORCH_VARIANTS if variants.get(n, {}).get("status") == "ok"]
    return min(ran, key=lambda n: variants[n]["median_ms"]) if ran else None


def _targets(variants: dict, engines_agree: bool, device: str) -> dict:
    ok = {n: e for n, e in variants.items() if e["status"] == "ok"}
    out: dict = {"exact_variants_same_predictions": engines_agree,
                 "all_of_a_to_c_ran": all(n in ok for n in SAME_INTEGERS)}
    if device == "cuda" and "xnor" in ok and "baseline" in ok:
        out["b_x_a"] = ok["xnor"]["x_baseline"]
        out["b_x_a_at_least_7"] = out["b_x_a"] >= paper.kernel_ratio("mlp_xnor_vs_baseline")
        fastest_c = min((ok[n]["median_ms"] for n in ok if n.startswith("xnor-bitplane")), default=None)
        out["c_faster_than_b"] = fastest_c is not None and fastest_c < ok["xnor"]["median_ms"]
    packed = [n for n in ok if n != "baseline" and n not in TORCH_VARIANTS]
    stock = best_torch(variants)
    if stock and packed:
        best = min(packed, key=lambda n: ok[n]["median_ms"])
        out["fastest_packed"], out["best_torch"] = best, stock
        out["fastest_packed_x_torch"] = ok[best]["x_torch"]
        out["fastest_packed_x_best_torch"] = ok[best]["x_best_torch"]
        if device == "cpu":
            out["fastest_packed_x_best_torch_at_least_4"] = ok[best]["x_best_torch"] >= 4.0
    return out


# ---------------------------------------------------------------------------- output

def print_model_table(result: dict, console: Console) -> None:
    table = Table(title=f"MNIST MLP, {result['data']['images']} images, on {result['device']['hardware']}")
    for col in ("", "variant", "ms", "images/s", "x (a)", "x (d)", "error %", "differ from (d)"):
        table.add_column(col, justify="left" if col in ("", "variant") else "right")
    for name, e in result["variants"].items():
        if e["status"] != "ok":
            table.add_row(e["paper_row"], name, e["status"].split(":")[0], "", "", "", "", "")
            continue
        f = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        table.add_row(e["paper_row"], name, f"{e['median_ms']:.1f}", f"{e['images_per_s']:,.0f}",
                      f(e["x_baseline"], ".2f"), f(e["x_torch"], ".2f"), f(e["test_error_pct"], ".2f"),
                      f(e["predictions_differing_from_torch"], "d"))
    console.print(table)
    for name, e in result["variants"].items():
        status = "" if e["status"] == "ok" else f" -- {e['status']}"
        console.print(f"  {e['paper_row']} {name}: {e['label']}{status}", highlight=False)
    model, data = result["model"], result["data"]
    console.print(f"model: {model['source'] or 'none recorded'}; weights {model['weights']}; (d) is "
                  f"{model['torch_model']}; data: {data['source']}", highlight=False)
    console.print(f"targets: {json.dumps(result['targets'])}; paper: (b) {result['paper']['x_baseline']}x (a) "
                  "on a GTX 750", highlight=False)


def run_model_bench(model: str, run: Path | None, device: str, data_dir: Path | None, repeat: int, out: Path,
                    command: str, console: Console, variants: str = "all") -> Path:
    """The ``bnnctl bench --model ...`` command: bench, print, record; an error if the engine variants
    disagree."""
    check_arguments(Path(out), repeat)
    result = bench_model(model, run, device, data_dir, repeat, command=command, console=console,
                         names=parse_names(variants, VARIANTS, "variant", " for --model"))
    print_model_table(result, console)
    path = record(result, out)
    console.print(f"recorded {path}")
    if not result["targets"]["exact_variants_same_predictions"]:
        raise UserError(f"the engine variants and the exact torch variants predicted different classes, so one kernel "
                        f"is wrong (recorded in {path}).")
    return path
