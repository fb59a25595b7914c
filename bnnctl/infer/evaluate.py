"""``bnnctl eval``: a recorded run's error on a split, with the float model or the packed engine.

What is evaluated is a run folder, its ``best.pt``, or an export file (``.bnnx``, from ``bnnctl export``).
An export runs on the packed engine (``--engine xnor``, its default); ``--engine float`` on an export
rebuilds the float model from it (MLPs only: +/-1 weights and the folded thresholds, the trained float
model's own products). The data comes from the export's recipe data section, or for version 1 exports,
which lack it, from the recipe.yaml beside the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from ..checkpoints import load_model
from ..core.losses import LOSSES
from ..data import load_splits
from ..errors import UserError, did_you_mean
from ..progress import counting
from ..provenance import resolve_device
from ..recipe import DataConfig, load_recipe, resolve, resolve_data
from ..runs import RECIPE_FILE
from ..core.evaluation import evaluate
from .bnnx import EXPORT_SUFFIX, MAGIC, load_export
from .exported import ExportedModel
from .float_model import float_model_from_export
from .variants import AUTO, ENGINE_VARIANTS, default_variant

ENGINES = ("float", "xnor")
SPLITS = ("test", "valid")


def is_export_file(path: Path) -> bool:
    """Whether path names an export: a .bnnx file, or any file that starts with the export signature."""
    if path.suffix == EXPORT_SUFFIX:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _export_data(exported: ExportedModel, path: Path) -> DataConfig:
    """The recipe data section to evaluate an export on: its own, else the recipe.yaml beside it."""
    if exported.data is not None:
        return resolve_data(exported.data, str(path))
    beside = path.parent / RECIPE_FILE
    if beside.is_file():
        return load_recipe(beside).data
    raise UserError(f"{path} does not say which data it was trained on (a version 1 export) and no {RECIPE_FILE} "
                    "lies beside it; export the run again, or evaluate its run folder.")


def _predictions_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                       on_batch: Callable[[int], object], batch_size: int = 1000) -> float:
    model = model.to(device)
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(transform(x[i:i + batch_size].to(device)).float())
            wrong += (logits.argmax(1).cpu() != y[i:i + batch_size].cpu()).sum().item()
            on_batch(len(logits))
    return 100.0 * wrong / max(len(y), 1)


def _variant_words(exported: ExportedModel, variant: str | None, dev: torch.device) -> str:
    """Which engine variant ran, for the printed line: the one named, or the rule's choice for eval's batches."""
    from .engine import default_batch_size, torch_int8_is_fast
    if variant is not None:
        return f"variant {variant}"
    chosen = default_variant(exported, dev.type, default_batch_size(exported), torch_int8_is_fast())
    return f"variant {chosen}, the default for batches of {default_batch_size(exported):,}"


def _eval_export(path: Path, split: str, engine: str | None, dev: torch.device, data_dir: Path | None,
                 console: Console, variant: str | None = None) -> float:
    exported = load_export(path, console)
    engine = engine or "xnor"
    if engine == "float" and any(layer.kind != "dense" for layer in exported.layers):
        raise UserError(f"--engine float on an export rebuilds the float model from it, which bnnctl can do for "
                        f"MLPs only and {path} holds convolutions; use --engine xnor (the packed engine).")
    data = _export_data(exported, path)
    splits = load_splits(data, data_dir)
    if data.variant and splits.variant != data.variant:
        console.print(f"[yellow]note:[/] trained on {data.variant}, evaluating on {splits.variant}")
    if splits.num_classes > exported.num_classes:
        raise UserError(f"{path} has {exported.num_classes} classes but its data set {splits.variant} has "
                        f"{splits.num_classes}.")
    x, y = splits.split(split)
    if tuple(x.shape[1:]) != tuple(exported.input_shape):
        raise UserError(f"{path} takes inputs of shape {list(exported.input_shape)}, but {splits.variant} gives "
                        f"{list(x.shape[1:])}.")
    # The preprocessing the export carries, where it does: what a deployment of the file applies.
    transform = exported.preprocessing.transform if exported.preprocessing is not None else splits.transform
    with counting(console, f"{split} images", len(x)) as advance:
        if engine == "xnor":
            from .engine import export_error
            error = export_error(exported, x, y, transform, dev, variant or AUTO, advance)
            how = f"xnor (the packed engine on the export, {_variant_words(exported, variant, dev)})"
        else:
            error = _predictions_error(float_model_from_export(exported), x, y, transform, dev, advance)
            how = "float (the float model rebuilt from the export)"
    info = exported.info
    console.print(f"{split} error: [bold]{error:.2f}%[/] ({len(x)} images of {splits.variant}, engine {how}, "
                  f"epoch {info.get('epoch')})", highlight=False)
    recorded = info.get("test_error_pct") if split == "test" else None
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        same = abs(recorded - error) < 1e-9
        console.print(f"recorded at training: {recorded:.2f}% ({'agrees' if same else 'differs'})",
                      highlight=False)
    return error


def run_eval(run: Path, split: str, engine: str | None, device: str, data_dir: Path | None,
             console: Console, variant: str | None = None) -> float:
    """Evaluate a run folder, a best.pt or an export file. engine: "float", "xnor" or None (the default:
    float for a run, the packed engine for an export); variant: the packed engine's (``variants.ENGINE_VARIANTS``,
    None or "auto": the rule's choice for the batch)."""
    if split not in SPLITS:
        raise UserError(f"--split must be test or valid, got {split!r}{did_you_mean(split, SPLITS)}")
    if engine is not None and engine not in ENGINES:
        raise UserError(f"--engine must be float or xnor, got {engine!r}{did_you_mean(engine, ENGINES)}")
    if variant is not None and variant != AUTO and variant not in ENGINE_VARIANTS:
        raise UserError(f"unknown --variant {variant!r}; choose {AUTO} or one of {', '.join(ENGINE_VARIANTS)}"
                        f"{did_you_mean(variant, [AUTO, *ENGINE_VARIANTS])}")
    variant = None if variant == AUTO else variant
    run = Path(run)
    export = (run.is_file() and is_export_file(run)) or (run.suffix == EXPORT_SUFFIX and not run.is_dir())
    if variant is not None and (engine or ("xnor" if export else "float")) != "xnor":
        raise UserError("--variant chooses how the packed engine runs; give it with --engine xnor.")
    dev = resolve_device(device)
    if export:
        return _eval_export(run, split, engine, dev, data_dir, console, variant)
    engine = engine or "float"
    record, model, recorded = load_model(run)
    recipe = resolve(record["recipe"], str(run))
    splits = load_splits(recipe.data, data_dir)
    if recipe.data.variant and splits.variant != recipe.data.variant:
        console.print(f"[yellow]note:[/] trained on {recipe.data.variant}, evaluating on {splits.variant}")
    x, y = splits.split(split)
    how = engine
    with counting(console, f"{split} images", len(x)) as advance:
        if engine == "xnor":
            from .engine import export_error
            from .fold import export_model

            exported = export_model(record, model)
            error = export_error(exported, x, y, splits.transform, dev, variant or AUTO, advance)
            how = f"xnor ({_variant_words(exported, variant, dev)})"
        else:
            model = model.to(dev)
            _, error = evaluate(model, x, y, splits.transform, LOSSES[recipe.train.loss],
                                recipe.train.eval_batch_size, dev, on_batch=advance)
    console.print(f"{split} error: [bold]{error:.2f}%[/] ({len(x)} images of {splits.variant}, engine {how}, "
                  f"epoch {record['epoch']})", highlight=False)
    key = "test_error_pct" if split == "test" else "valid_error_pct"
    if record.get(key) is not None:
        same = abs(record[key] - error) < 1e-9
        console.print(f"recorded at training: {record[key]:.2f}% ({'agrees' if same else 'differs'})",
                      highlight=False)
    return error
