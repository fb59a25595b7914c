"""``bnnctl bench --model mnist-mlp``: the right half of the paper's Figure 3 (its spec and loaders;
``model_bench`` runs it).

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
(d)'s (and torch-int8's): the command fails otherwise. The bf16 model rounds its sums, so its differences from (d) are
recorded, not checked; int8 is exact. The record names the fastest torch variant ("best stock path") and
each engine variant's speed-up over it. On CUDA the other XNOR kernels of ``kernels.xnor_gemm`` can be timed
too (xnor-paper, xnor-bitplane-csa, xnor-bitplane-tc).

The model is the newest finished MNIST run under ``results/mnist*/`` with the paper's architecture
(its ``best.pt``, else its ``model.bnnx`` export: checkpoints are git-ignored and may be absent);
without one, random weights (seed 0) with BatchNorm statistics from one batch of random images (see
``bench.models``), and the error column says nothing about accuracy. Every variant starts from the 8-bit
images and applies the model's own preprocessing (its recipe's ``data.preprocess``: the Theano recipe's
2x/255 - 1, the Torch7 recipe's standardization fitted on its training images); the engine variants whose
first layer needs 8-bit images scaled to [-1, 1] do not run a model trained on other inputs. Without the
MNIST files, 10,000 random 8-bit images stand in and the error column is not a test error either (a model
whose preprocessing is fitted on the training images then cannot be benched).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from .. import paper
from ..core.models import build_model
from ..data import MNIST_FILES, data_root, scale_to_pm1
from ..errors import UserError
from ..checkpoints import load_model
from ..infer.bnnx import EXPORT_SUFFIX, load_export
from ..infer.exported import UINT8_SCALE, ExportedModel
from ..infer.float_model import float_model_from_export
from ..infer.variants import ENGINE_VARIANTS
from ..infer.fold import export_model
from ..recipe import DataConfig, Recipe, load_recipe, resolve_data
from .models import CALIBRATION_IMAGES, SEED, calibrate_norms
from .specs import LoadedModel, ModelSpec, ModelVariant, TestImages, engine_row, model_transform

IMAGES = 10_000
BATCH = {"cuda": 10_000, "cpu": 1_000}

# The paper's names for the engine's variants (Figure 3's right half: (a) to (c); (c2), (c3) ours after them).
PAPER_ROWS = {"baseline": "(a)", "xnor": "(b)", "xnor-paper": "(b)", "xnor-bitplane": "(c)", "xnor-bitplane-csa": "(c)",
              "xnor-bitplane-tc": "(c)", "xnor-integer": "(c2)", "xnor-int8": "(c3)"}
_ENGINE_ORDER = sorted(ENGINE_VARIANTS, key=lambda name: PAPER_ROWS.get(name, "(z)"))  # stable: table order within

VARIANTS: dict[str, ModelVariant] = {
    **{name: engine_row(name, PAPER_ROWS.get(name, "")) for name in _ENGINE_ORDER},
    "torch": ModelVariant("the float model in torch (cuBLAS fp32 with TF32 off / oneDNN)", paper_row="(d)"),
    "torch-bf16": ModelVariant("the float model in torch, bfloat16", dtype=torch.bfloat16, exact=False,
                               paper_row="(d)"),
    "torch-int8": ModelVariant("the float model in torch, binary hidden layers on torch._int_mm (int8 +-1, exact)",
                               int8_hidden=True, paper_row="(d)"),
}
SAME_INTEGERS = ("baseline", "xnor", "xnor-bitplane", "xnor-integer", "xnor-int8")  # (a)-(c)
INPUT_SHAPE = (1, 28, 28)


# ---------------------------------------------------------------------------- model

def _architecture(recipe: Recipe) -> tuple:
    m = recipe.model
    return m.arch, tuple(m.hidden) if m.arch == "mlp" else None


def find_model(results: Path, spec: ModelSpec) -> Path | None:
    """Newest run under results/mnist*/ with the spec's architecture that has best.pt or an export;
    finished runs first."""
    wanted = _architecture(spec.recipe())
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


def _model_path(run: Path | None, results: Path, spec: ModelSpec) -> Path | None:
    if run is None:
        return find_model(results, spec)
    if not run.is_dir():
        return run
    for candidate in (run / "best.pt", run / f"model{EXPORT_SUFFIX}"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{run} holds neither best.pt nor model{EXPORT_SUFFIX}.")


def load_bench_model(path: Path | None, spec: ModelSpec) -> tuple[ExportedModel, torch.nn.Module, dict]:
    """(export, float model, description) from best.pt, an export file, or random weights."""
    if path is not None and path.suffix == EXPORT_SUFFIX:
        exported = load_export(path)
        return exported, float_model_from_export(exported), {
            "source": str(path), "weights": "trained", "epoch": exported.info.get("epoch"),
            "recorded_test_error_pct": exported.info.get("test_error_pct"),
            "torch_model": "rebuilt from the export: +/-1 fp32 weights, thresholds in place of BN + sign"}
    if path is not None:
        record, model, recorded = load_model(path)
        return export_model(record, model), model, {
            "source": str(path), "weights": "trained", "run_status": recorded.get("status"), "epoch": record.get("epoch"),
            "recorded_test_error_pct": record.get("test_error_pct"), "torch_model": "the trained float model"}
    recipe = spec.recipe()
    torch.manual_seed(SEED)
    model = build_model(recipe.model, spec.input_shape, spec.num_classes)
    calibrate_norms(model, spec.input_shape)
    record = {"recipe": recipe.to_dict(), "input_shape": list(spec.input_shape), "num_classes": spec.num_classes}
    return export_model(record, model), model, {
        "source": None, "weights": f"random (seed {SEED}; BN statistics from {CALIBRATION_IMAGES} random images; no "
                                   "trained run recorded): the error column says nothing about accuracy",
        "epoch": None, "recorded_test_error_pct": None, "torch_model": "the float model, random weights"}


def model_data(exported: ExportedModel, path: Path | None, spec: ModelSpec) -> DataConfig:
    """The recipe data section the model was trained on (its preprocessing); a version 1 export has none, which
    for a model of 8-bit scaled inputs says nothing more than its encoding does."""
    if exported.data is not None:
        return resolve_data(exported.data, str(path or spec.recipe_file))
    if exported.input_encoding == UINT8_SCALE:
        return replace(spec.recipe().data, preprocess="scale")
    raise UserError(f"{path} does not say how its inputs were preprocessed (a version 1 export of a model not trained "
                    "on 8-bit images scaled to [-1, 1]); export its run again.")


def load(spec: ModelSpec, run: Path | None, results: Path) -> LoadedModel:
    path = _model_path(run, results, spec)
    exported, model, info = load_bench_model(path, spec)
    data_cfg = model_data(exported, path, spec)
    return LoadedModel(exported, model.eval(), {**info, "preprocess": data_cfg.preprocess}, data_cfg)


# ---------------------------------------------------------------------------- data

def load_test_images(spec: ModelSpec, data_dir: Path | None, data_cfg: DataConfig, count: int) -> TestImages:
    """The first ``count`` of MNIST's 10,000 test images and labels, or random 8-bit images (labels None), with the
    model's own preprocessing (``data_cfg``, its recipe's data section; fitted ones need the MNIST files)."""
    root = data_root(data_dir)
    raw = root / "MNIST" / "raw"
    if all((raw / name).is_file() for name in MNIST_FILES.values()):
        from ..data import load_mnist
        data = load_mnist(replace(spec.recipe().data, source="auto", npz=None), root)
        x, y = torch.from_numpy(data.x_test[:count].copy()), torch.from_numpy(data.y_test[:count].copy())
        return TestImages(x, y, {"images": len(x), "dataset": "mnist", "source": "MNIST test set"},
                          model_transform(data_cfg, root))
    if data_cfg.preprocess != "scale":
        raise UserError(f"the model was trained on inputs preprocessed as {data_cfg.preprocess!r}, fitted on its "
                        f"training images, and there is no MNIST under {raw} to fit it on; give --data-dir the data "
                        "root that holds it.")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (IMAGES, *spec.input_shape), generator=g, dtype=torch.uint8)[:count]
    return TestImages(x, None, {"images": len(x), "dataset": None,
                                "source": f"{len(x):,} random 8-bit images (no MNIST under {raw}): the error column "
                                          "is not a test error"}, scale_to_pm1)


# ---------------------------------------------------------------------------- what the record compares

def widths(spec: ModelSpec, model: LoadedModel) -> str:
    layers = model.exported.layers
    return "-".join(str(w) for w in [layers[0].fan_in] + [layer.out_features for layer in layers])


def paper_targets(ok: dict[str, dict], device: str) -> dict:
    """The paper's claims about (a)-(c): (b) 7x (a) on a GPU, (c) faster than (b); on a CPU, the target that
    the fastest packed variant runs at least 4x the best stock path."""
    out: dict = {"all_of_a_to_c_ran": all(n in ok for n in SAME_INTEGERS)}
    if device == "cuda" and "xnor" in ok and "baseline" in ok:
        out["b_x_a"] = ok["xnor"]["x_baseline"]
        out["b_x_a_at_least_7"] = out["b_x_a"] >= paper.kernel_ratio("mlp_xnor_vs_baseline")
        fastest_c = min((ok[n]["median_ms"] for n in ok if n.startswith("xnor-bitplane")), default=None)
        out["c_faster_than_b"] = fastest_c is not None and fastest_c < ok["xnor"]["median_ms"]
    packed = [n for n in ok if VARIANTS[n].packed]
    if packed and device == "cpu":
        best = min(packed, key=lambda n: ok[n]["median_ms"])
        if ok[best].get("x_best_torch") is not None:
            out["fastest_engine_x_best_torch_at_least_4"] = ok[best]["x_best_torch"] >= 4.0
    out["paper_b_x_a"] = paper.kernel_ratio("mlp_xnor_vs_baseline")
    out["paper_claim"] = next(r.claim for r in paper.KERNEL_RATIOS if r.key == "mlp_xnor_vs_baseline")
    return out


SPEC = ModelSpec(
    name="mnist-mlp", title="MNIST MLP", recipe_file="mnist.yaml", input_shape=INPUT_SHAPE, num_classes=10,
    variants=VARIANTS, load_model=load, load_images=load_test_images, architecture=widths,
    batch=lambda device, exported: BATCH[device], images=IMAGES, images_option=False,
    ratios={"x_baseline": "baseline", "x_torch": "torch"}, differing_key="predictions_differing_from_torch",
    extra_targets=paper_targets)


__all__ = ["SPEC", "VARIANTS", "IMAGES", "find_model", "load_bench_model", "load_test_images"]
