"""``bnnctl bench --model cifar10-convnet`` / ``svhn-convnet``: the paper's ConvNets on the packed engine.

The paper's Table 1 ConvNets (``recipes/cifar10.yaml``: (2x128C3)-MP2-(2x256C3)-MP2-(2x512C3)-MP2-
(2x1024FC)-10; ``recipes/svhn.yaml``: the same with half the conv widths), each run from 8-bit images
on the device to predicted classes, batch by batch, over the test images:

  xnor-integer      packed engine: XNOR kernels, first layer as exact integers on torch's fp32 matmul;
  xnor-int8         packed engine: XNOR kernels, first layer as exact integers on torch's int8 matmul;
  xnor-bitplane     packed engine: XNOR kernels, first layer on the 8 bit planes (the paper's Algorithm 5);
  xnor              packed engine: XNOR kernels, first layer on the float baseline kernel (the paper's setup);
  torch             the float model in torch, fp32, NCHW (cuDNN with TF32 off / oneDNN): the reference;
  torch-channels-last  the same fp32 model and inputs in channels-last memory format;
  torch-bf16        the same model in bfloat16, channels-last (oneDNN with AVX512-BF16 / AMX on a CPU).

Every engine variant must predict exactly the float model's class on every image (``torch``, fp32:
the model that was trained); a difference is recorded and fails the command. The bf16 and
channels-last models are timed for speed; their differences from the fp32 model (bf16 rounds the
inputs, the sums and the BN) are recorded, not checked.

The model: ``--run`` (a run directory or its ``best.pt``, of the same architecture, trained on 8-bit
images scaled to [-1, 1]) or else random weights (seed 0) whose BatchNorm statistics are set from one
batch of random images, so that every unit's threshold sits among its pre-activations as in a trained
network (at BN's initial statistics every first-layer threshold would sit exactly at 0, where the exact
integer pre-activation of the engine and the float model's rounded one tie).

The data: the dataset's test images under the data root (the run's pre-staged ``.npz`` if its recipe
names one, else the original files, else, for CIFAR-10, the ``cifar10-jpeg.npz`` stand-in, which is
recorded as ``cifar10-jpeg`` and never as CIFAR-10), the first ``--images`` of them (default 10,000);
without any, that many random 8-bit images (seed 0), and the error column is not a test error.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import kernels
from ..checkpoints import load_model
from ..core.models import build_model
from ..data import DATASETS, data_root, load_npz, scale_to_pm1, wants_npz
from ..data.common import npz_path
from ..errors import UserError
from ..infer.engine import FIRST_LAYERS, PackedEngine, default_batch_size
from ..infer.bnnx import EXPORT_SUFFIX
from ..infer.exported import UINT8_SCALE, ExportedModel, input_encoding
from ..infer.fold import export_model
from ..provenance import resolve_device
from ..recipe import DataConfig, ModelConfig, Recipe, load_recipe, recipes_dir, resolve
from ..runs import BEST_FILE
from .models import CALIBRATION_IMAGES, SEED, calibrate_norms, frozen_float_model
from .timing import check_arguments, header, measuring, parse_names, record, time_model_passes

MODELS = {"cifar10-convnet": "cifar10.yaml", "svhn-convnet": "svhn.yaml"}  # --model -> the recipe it is
INPUT_SHAPE, NUM_CLASSES = (3, 32, 32), 10
IMAGES = 10_000
BATCH = {"cuda": 1000}  # on a CPU: the engine's own batch for conv nets (infer.engine.default_batch_size)
BUDGET_S = 20.0  # seconds per variant for all timing rounds together; a full test set gets one round
STAND_IN = "cifar10-jpeg.npz"  # the CIFAR-10 stand-in (../shared/data/cifar10-reconstruction/build.py)


@dataclass(frozen=True)
class Variant:
    label: str
    first_layer: str | None = None  # the engine's first layer (FIRST_LAYERS); None: the float model in torch
    xnor_impl: str = "tuned"
    dtype: torch.dtype = torch.float32  # torch variants
    channels_last: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")

    @property
    def engine(self) -> bool:
        return self.first_layer is not None


VARIANTS: dict[str, Variant] = {
    "xnor-integer": Variant(f"packed engine: XNOR kernels, first layer: {FIRST_LAYERS['integer']}", "integer"),
    "xnor-int8": Variant(f"packed engine: XNOR kernels, first layer: {FIRST_LAYERS['int8']}", "int8"),
    "xnor-bitplane": Variant("packed engine: XNOR kernels, first layer on the 8 bit planes (Algorithm 5)", "bitplane"),
    "xnor": Variant("packed engine: XNOR kernels, first layer on the float baseline kernel (the paper's setup)",
                    "float"),
    "xnor-bitplane-tc": Variant("as xnor-bitplane, XNOR on the tensor-core kernel", "bitplane", xnor_impl="tc",
                                devices=("cuda",)),
    "torch": Variant("the float model in torch, fp32, NCHW (TF32 off): the reference"),
    "torch-channels-last": Variant("the float model in torch, fp32, channels-last", channels_last=True),
    "torch-bf16": Variant("the float model in torch, bfloat16, channels-last", dtype=torch.bfloat16,
                          channels_last=True),
}
REFERENCE = "torch"
TORCH_RATIOS = {"x_torch": "torch", "x_torch_channels_last": "torch-channels-last", "x_torch_bf16": "torch-bf16"}


# ---------------------------------------------------------------------------- model

def model_recipe(model_name: str) -> Recipe:
    """The resolved recipe whose model the named bench runs."""
    return load_recipe(recipes_dir() / MODELS[model_name])


def _architecture(model_cfg: ModelConfig) -> tuple:
    return model_cfg.arch, tuple(model_cfg.conv), tuple(model_cfg.fc), model_cfg.kernel_size


def architecture_text(model_cfg: ModelConfig, classes: int = NUM_CLASSES) -> str:
    """e.g. 128C3-128C3-MP2-...-1024FC-1024FC-10."""
    k = model_cfg.kernel_size
    parts = ["MP2" if c == "M" else f"{c}C{k}" for c in model_cfg.conv]
    return "-".join(parts + [f"{w}FC" for w in model_cfg.fc] + [str(classes)])


def _check_run_recipe(recipe: Recipe, wanted: Recipe, model_name: str, path: Path) -> None:
    if _architecture(recipe.model) != _architecture(wanted.model):
        raise UserError(f"{path} holds a {recipe.name} model whose architecture is not the "
                        f"{model_name} one ({architecture_text(wanted.model)}).")
    if input_encoding(recipe.to_dict()) != UINT8_SCALE:
        raise UserError(f"{path} was trained on inputs preprocessed as {recipe.data.preprocess!r}; "
                        f"the {model_name} bench runs models trained on 8-bit images scaled to [-1, 1] (preprocess: "
                        f"scale).")


def load_convnet(model_name: str, run: Path | None) -> tuple[dict, nn.Module, dict]:
    """(model record, float model in eval mode on the CPU, description) from --run or random weights."""
    wanted = model_recipe(model_name)
    if run is None:
        torch.manual_seed(SEED)
        model = build_model(wanted.model, INPUT_SHAPE, NUM_CLASSES)
        calibrate_norms(model, INPUT_SHAPE)
        record = {"recipe": wanted.to_dict(), "input_shape": list(INPUT_SHAPE), "num_classes": NUM_CLASSES}
        return record, model.eval(), {
            "source": None, "recipe": wanted.name,
            "weights": f"random (seed {SEED}; BN statistics from {CALIBRATION_IMAGES} random images): the error "
                       "column says nothing about accuracy",
            "epoch": None, "recorded_test_error_pct": None, "data_cfg": wanted.data}
    path = run / BEST_FILE if run.is_dir() else run
    if path.suffix == EXPORT_SUFFIX:
        raise UserError(f"{path} is an export; the {model_name} bench needs the run's {BEST_FILE}, the float model "
                        "it checks the engine against.")
    if run.is_dir() and not path.is_file():
        raise UserError(f"{run} holds no {BEST_FILE}, the trained model the bench times.")
    record, model, recorded = load_model(path)
    recipe = resolve(record["recipe"], str(path))
    _check_run_recipe(recipe, wanted, model_name, path)
    if tuple(record.get("input_shape", ())) != INPUT_SHAPE or record.get("num_classes") != NUM_CLASSES:
        raise UserError(f"{path} holds a model for inputs {record.get('input_shape')} and {record.get('num_classes')} "
                        f"classes; the {model_name} bench runs 3 x 32 x 32 images and 10 classes.")
    return record, model, {
        "source": str(path), "recipe": recipe.name, "weights": "trained",
        "run_status": recorded.get("status"), "epoch": record.get("epoch"),
        "recorded_test_error_pct": record.get("test_error_pct"), "trained_on": record.get("variant"),
        "data_cfg": recipe.data}


# ---------------------------------------------------------------------------- data

# The original files the loaders read (torchvision's names; checked here without importing torchvision).
ORIGINAL_FILES = {"cifar10": [f"cifar-10-batches-py/{name}" for name in
                              [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]],
                  "svhn": ["SVHN/train_32x32.mat", "SVHN/test_32x32.mat"]}


def _originals_present(dataset: str, root: Path) -> bool:
    """The original files are all there (the loaders would otherwise try to download them)."""
    return all((root / name).is_file() for name in ORIGINAL_FILES[dataset])


def load_test_images(dataset: str, data_dir: Path | None, data_cfg: DataConfig, count: int
                     ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """The first ``count`` test images (uint8 NCHW) and labels of the dataset, or ``count`` random 8-bit
    images (labels None); and a description: images, source, dataset (the variant measured on, or None)."""
    root = data_root(data_dir)
    raw, where = None, None
    if wants_npz(data_cfg) and data_cfg.npz:
        path = npz_path(data_cfg, root)
        if path.is_file():
            raw, where = load_npz(path, dataset, channels=INPUT_SHAPE[0]), str(path)
    if raw is None and root.is_dir() and _originals_present(dataset, root):
        # md5-checked as the originals unless the run's recipe names its own variant of them (e.g. svhn-synthetic);
        # split "tail": SVHN's train and test files only, not extra
        variant = None if wants_npz(data_cfg) else data_cfg.variant
        cfg = replace(data_cfg, source="auto", npz=None, variant=variant, split="tail")
        raw, where = DATASETS[dataset](cfg, root), str(root)
    if raw is None and dataset == "cifar10" and (root / STAND_IN).is_file():
        raw, where = load_npz(root / STAND_IN, dataset, channels=INPUT_SHAPE[0]), str(root / STAND_IN)
    if raw is None:
        g = torch.Generator().manual_seed(SEED)
        x = torch.randint(0, 256, (count, *INPUT_SHAPE), generator=g, dtype=torch.uint8)
        return x, None, {"images": count, "dataset": None,
                         "source": f"{count:,} random 8-bit images (no {dataset} test set under {root}): the error "
                                   "column is not a test error"}
    total = len(raw.x_test)
    if tuple(raw.x_test.shape[1:]) != INPUT_SHAPE:
        raise UserError(f"the test images in {where} have shape {list(raw.x_test.shape[1:])}; the ConvNet takes "
                        f"{list(INPUT_SHAPE)}.")
    if count > total:
        raise UserError(f"--images {count} is more than the {total:,} test images of {raw.variant} in {where}.")
    stand_in = "" if raw.variant == dataset else f", a stand-in for {dataset}, not {dataset} itself"
    x = torch.from_numpy(raw.x_test[:count].copy())
    y = torch.from_numpy(raw.y_test[:count].copy()).long()
    return x, y, {"images": count, "dataset": raw.variant, "path": where,
                  "source": f"the first {count:,} of the {total:,} test images of {raw.variant} ({where}{stand_in})"}


# ---------------------------------------------------------------------------- the timed variants

def _batches(x: torch.Tensor, batch: int):
    return [x[i:i + batch] for i in range(0, len(x), batch)]


def _runner(name: str, exported: ExportedModel, float_model: nn.Module, device: torch.device
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from one batch of 8-bit images (on the device) to predicted classes."""
    v = VARIANTS[name]
    if v.engine:
        engine = PackedEngine(exported, device, first_layer=v.first_layer, xnor_impl=v.xnor_impl)
        return lambda xb: engine.logits(xb).argmax(1)
    model = copy.deepcopy(float_model).to(device=device, dtype=v.dtype)
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    return lambda xb: model(scale_to_pm1(xb).to(v.dtype).contiguous(memory_format=fmt)).argmax(1)


def bench_convnet(model_name: str, run: Path | None = None, device: str = "auto", data_dir: Path | None = None,
                  repeat: int = 20, images: int = IMAGES, command: str = "", console: Console | None = None,
                  names: list[str] | None = None, budget_s: float = BUDGET_S) -> dict:
    """The bench record (see ``run_convnet_bench``) of the named variants (default all)."""
    if model_name not in MODELS:
        raise UserError(f"unknown --model {model_name!r}; choose {', '.join(MODELS)}.")
    dev = resolve_device(device)
    if dev.type == "cuda" and not kernels.available()["cuda"]:
        raise UserError("the CUDA kernels are not available on this machine, so there is nothing to bench on the GPU.")
    say = console.print if console else (lambda *a, **kw: None)
    record_, float_model, model_info = load_convnet(model_name, run)
    data_cfg = model_info.pop("data_cfg")
    exported = export_model(record_, float_model)
    torch_model = frozen_float_model(float_model)
    dataset = model_recipe(model_name).data.dataset
    x, y, data_info = load_test_images(dataset, data_dir, data_cfg, images)
    x = x.to(dev)
    batch = BATCH.get(dev.type) or default_batch_size(exported)
    say(f"bench {model_name}: {len(x):,} images ({data_info['source']}), model "
        f"{model_info['source'] or 'random weights'}, {dev.type}, batches of {batch}")
    variants: dict[str, dict] = {}
    for name, v in VARIANTS.items():
        entry = {"label": v.label, "engine": v.engine, "first_layer": v.first_layer,
                 "xnor_impl": v.xnor_impl if v.engine else None}
        variants[name] = entry
        if names is not None and name not in names:
            entry["status"] = "not run: not selected"
        elif dev.type not in v.devices:
            entry["status"] = "not run: CUDA-only kernel"
    predictions = time_model_passes(variants, lambda name: _runner(name, exported, torch_model, dev), x, batch,
                                    dev, repeat, budget_s, say)
    if REFERENCE in predictions:
        reference, reference_note = predictions[REFERENCE], f"the {REFERENCE} variant's predictions"
    else:  # not selected (or failed): the float model once, untimed
        step = _runner(REFERENCE, exported, torch_model, dev)
        with measuring():
            reference = torch.cat([step(b) for b in _batches(x, batch)]).cpu()
        reference_note = "the fp32 float model, run once untimed (the torch variant was not timed)"
    targets = _add_comparisons(variants, predictions, reference, y)
    return {
        **header(model_name, command, dev),
        "model": {"name": model_name, "architecture": architecture_text(model_recipe(model_name).model),
                  "binary_weights": exported.binary_weights, **model_info},
        "data": data_info, "batch_size": batch, "repeat": repeat,
        "reference": {"variant": REFERENCE, "predictions": reference_note},
        "variants": variants, "targets": targets,
    }


def _add_comparisons(variants: dict, predictions: dict, reference: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Errors, disagreements with the float model, speed-ups over each torch variant; the targets."""
    ok = {name: e for name, e in variants.items() if e["status"] == "ok"}
    torch_ok = [name for name in ok if not VARIANTS[name].engine]
    best_torch = min(torch_ok, key=lambda n: ok[n]["median_ms"]) if torch_ok else None
    for name, e in ok.items():
        pred = predictions[name]
        e["test_error_pct"] = None if labels is None else 100.0 * (pred != labels).sum().item() / len(labels)
        e["predictions_differing_from_float"] = int((pred != reference).sum())
        for key, ref in TORCH_RATIOS.items():
            e[key] = ok[ref]["median_ms"] / e["median_ms"] if ref in ok else None
        e["x_best_torch"] = ok[best_torch]["median_ms"] / e["median_ms"] if best_torch else None
    engines = [name for name in ok if VARIANTS[name].engine]
    differing = {name: ok[name]["predictions_differing_from_float"] for name in engines}
    out: dict = {"engine_same_predictions_as_float_model": not any(differing.values()),
                 "engine_variants_checked": engines, "best_torch": best_torch}
    if engines:
        fastest = min(engines, key=lambda n: ok[n]["median_ms"])
        out.update(fastest_engine=fastest, fastest_engine_images_per_s=ok[fastest]["images_per_s"],
                   fastest_engine_x_torch=ok[fastest]["x_torch"],
                   fastest_engine_x_best_torch=ok[fastest]["x_best_torch"])
    return out


# ---------------------------------------------------------------------------- output

def print_convnet_table(result: dict, console: Console) -> None:
    data = result["data"]
    on = data["dataset"] or "random images"
    table = Table(title=f"{result['model']['name']} ({result['model']['architecture']}), {data['images']:,} images "
                        f"({on}), on {result['device']['hardware']}")
    columns = ("variant", "ms", "images/s", "x torch fp32", "x channels-last", "x torch bf16", "x best torch",
               "error %", "differ from fp32")
    for col in columns:
        table.add_column(col, justify="left" if col == "variant" else "right")
    f = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for name, e in result["variants"].items():
        if e["status"] != "ok":
            table.add_row(name, e["status"].split(":")[0], *[""] * (len(columns) - 2))
            continue
        differ = e["predictions_differing_from_float"]
        differ_cell = f"{differ:d}" if not (e["engine"] and differ) else f"[bold red]{differ:d}[/]"
        table.add_row(name, f"{e['median_ms']:.1f}", f"{e['images_per_s']:,.0f}", f(e["x_torch"], ".2f"),
                      f(e["x_torch_channels_last"], ".2f"), f(e["x_torch_bf16"], ".2f"), f(e["x_best_torch"], ".2f"),
                      f(e["test_error_pct"], ".2f"), differ_cell)
    if console.width < 130:  # a log file or a narrow terminal: one line per row
        console = Console(file=console.file, width=130, no_color=console.no_color)
    console.print(table)
    for name, e in result["variants"].items():
        status = "" if e["status"] == "ok" else f" -- {e['status']}"
        console.print(f"  {name}: {e['label']}{status}", highlight=False)
    model = result["model"]
    console.print(f"model: {model['source'] or 'none given'}; weights {model['weights']}; data: {data['source']}",
                  highlight=False)
    console.print(f"targets: {json.dumps(result['targets'])}", highlight=False)


def run_convnet_bench(model: str, run: Path | None, device: str, data_dir: Path | None, repeat: int, out: Path,
                      command: str, console: Console, variants: str = "all", images: int | None = None) -> Path:
    """The ``bnnctl bench --model cifar10-convnet|svhn-convnet`` command: bench, print, record; an error if
    an engine variant predicted another class than the float model on any image, or failed."""
    check_arguments(Path(out), repeat, {"images": images})
    result = bench_convnet(model, run, device, data_dir, repeat, images or IMAGES, command=command, console=console,
                           names=parse_names(variants, VARIANTS, "variant", " for --model"))
    print_convnet_table(result, console)
    path = record(result, out)
    console.print(f"recorded {path}")
    engines = result["targets"]["engine_variants_checked"]
    differing = [n for n in engines if result["variants"][n]["predictions_differing_from_float"]]
    failed = [n for n, e in result["variants"].items() if e["status"].startswith("failed")]
    if differing or failed:
        raise UserError("engine variants predicting another class than the float model: "
                        f"{', '.join(differing) or 'none'}; variants failed: {', '.join(failed) or 'none'} "
                        f"(recorded in {path}).")
    return path


__all__ = ["MODELS", "VARIANTS", "IMAGES", "bench_convnet", "load_convnet",
           "load_test_images", "model_recipe", "print_convnet_table", "run_convnet_bench"]
