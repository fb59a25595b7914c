"""``bnnctl eval``: a recorded run's error on a split, with the float model or the packed engine."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..core.losses import LOSSES
from ..data import load_splits
from ..errors import UserError
from ..runs import load_model, resolve_device
from ..train.evaluate import evaluate


def run_eval(run: Path, split: str, engine: str, device: str, data_dir: Path | None, console: Console) -> float:
    if split not in ("test", "valid"):
        raise UserError(f"--split must be test or valid, got {split!r}.")
    if engine not in ("float", "xnor"):
        raise UserError(f"--engine must be float or xnor, got {engine!r}.")
    dev = resolve_device(device)
    record, model, recorded = load_model(run)
    recipe = record["recipe"]
    splits = load_splits(recipe["data"], data_dir)
    if recipe["data"].get("variant") and splits.variant != recipe["data"]["variant"]:
        console.print(f"[yellow]note:[/] trained on {recipe['data']['variant']}, evaluating on {splits.variant}")
    x, y = splits.split(split)
    if engine == "xnor":
        from .engine import engine_error

        error = engine_error(record, model, x, y, splits.transform, dev)
    else:
        model = model.to(dev)
        _, error = evaluate(model, x, y, splits.transform, LOSSES[recipe["train"]["loss"]],
                            recipe["train"]["eval_batch_size"], dev)
    console.print(f"{split} error: [bold]{error:.2f}%[/] ({len(x)} images of {splits.variant}, engine {engine}, "
                  f"epoch {record['epoch']})", highlight=False)
    key = "test_error_pct" if split == "test" else "valid_error_pct"
    if record.get(key) is not None:
        same = abs(record[key] - error) < 1e-9
        console.print(f"recorded at training: {record[key]:.2f}% ({'agrees' if same else 'differs'})",
                      highlight=False)
    return error
