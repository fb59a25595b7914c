"""``bnnctl train --dry-run``: what a run would be, printed, with nothing written and nothing downloaded.

The recipe is resolved exactly as ``bnnctl train`` resolves it (``--fast`` for the device, ``--set``,
``--seed``, every check), so a bad recipe fails here with its usual sentence and exit code. The model is
built on PyTorch's meta device (``summary``) on images of the shape the data will have, read from a staged
.npz's header or known for the dataset's original files (``bnnctl.data.input_shape``), so no data need be
present. The output is YAML: the facts as comments, then the resolved recipe, so that it can be saved and
trained as it is.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..data import input_shape, physical_memory
from ..errors import UserError
from ..provenance import resolve_device
from ..recipe import dump_recipe, memory_needed
from ..runs import TENSORBOARD_DIR, free_run_dir, recipe_for_run
from .summary import summarize_recipe


def _bytes(n: float) -> str:
    unit, size = next((u, 2**p) for u, p in (("GiB", 30), ("MiB", 20), ("KiB", 10), ("", 0)) if n >= 2**p or not p)
    return f"{n:,.0f} bytes" + (f" ({n / size:,.2f} {unit})" if unit else "")


def dry_run(recipe: Path, overrides: list[str], device: str, data_dir: Path | None, runs_dir: Path,
            resume: Path | None, seed: int | None, run_id: str | None, fast: bool, console: Console,
            tensorboard: bool = False) -> None:
    """Print the resolved recipe, the run folder a run would create and the model's size."""
    if resume is not None:
        raise UserError(f"--dry-run shows a new run; a resumed run goes on exactly as recorded in "
                        f"{resume / 'recipe.yaml'}.")
    dev = resolve_device(device)
    cfg = recipe_for_run(recipe, overrides, seed, fast, dev.type, run_id)
    run_dir = free_run_dir(runs_dir, cfg.name, cfg.seed, run_id)
    shape, known_from = input_shape(cfg.data, data_dir)
    summary = summarize_recipe(cfg, str(recipe), shape)
    parameters, memory, memory_parts = memory_needed(cfg, shape, summary.num_classes)
    machine = physical_memory()
    of_machine = f", of this machine's {machine / 2**30:,.1f} GiB" if machine else ""
    facts = [
        "bnnctl train --dry-run: nothing was written and nothing downloaded",
        f"recipe {recipe}, resolved ({', '.join(_changes(overrides, seed, fast, dev.type))})",
        f"run directory: {run_dir} (not created)",
        *([f"tensorboard: {run_dir / TENSORBOARD_DIR} (tensorboard --logdir {runs_dir})"] if tensorboard else []),
        f"device: {dev}",
        f"images: {'x'.join(map(str, shape))} ({known_from}), {summary.num_classes} classes",
        f"parameters: {parameters:,}",
        f"float32 weights: {_bytes(4 * parameters)}",
        f"1-bit model: {_bytes(summary.total('bnn_bits') / 8)} (each +-1 weight 1 bit, every other value 32 bits, "
        f"as bnnctl summary counts; its .bnnx export folds each batch norm into thresholds)",
        f"training memory: about {_bytes(memory)}{of_machine} ({memory_parts})",
    ]
    for line in facts:
        console.print(f"# {line}", highlight=False, markup=False, soft_wrap=True)
    console.print(dump_recipe(cfg), end="", highlight=False, markup=False, soft_wrap=True)


def _changes(overrides: list[str], seed: int | None, fast: bool, device_type: str) -> list[str]:
    changes = [f"--fast for {device_type}"] if fast else []
    changes += [f"--set {item}" for item in overrides]
    changes += [f"--seed {seed}"] if seed is not None else []
    return changes or ["unchanged"]
