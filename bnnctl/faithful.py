"""Whether a run is the paper's experiment: its recorded recipe against the shipped recipe of its name.

A Table 1 cell stands for a shipped recipe. A run counts there only when its resolved recipe equals
the shipped one on every key that defines the experiment; the keys in ``NEUTRAL_KEYS`` are left out
because they change where or how fast a run goes, never what it computes (each is said why below).
Any other difference (widths, data limits, epochs, LR, schedule, loss, dataset variant) makes the
run *modified*: reported with each differing key, never in a cell.

Comparisons are over the resolved recipes as plain mappings (the ``recipe.yaml`` a run records), so
a recipe recorded before a field existed compares through that field's default.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

# Keys (dotted paths into the resolved recipe) that do not change the experiment.
NEUTRAL_KEYS: dict[str, str] = {
    "seed": "seeds are aggregated, not compared",
    "description": "prose",
    "data.source": "where the data files come from, not which data (the variant is compared)",
    "data.npz": "the path of a staged data file (the variant is compared)",
    "data.variant": "compared as the run's recorded dataset variant instead",
    "train.checkpoint_every": "how often state is saved",
    "train.eval_batch_size": "evaluation batches sum the same counts",
    # The fast switches that tests show give the plain step's numbers (tests/test_fast_path.py,
    # tests/test_fused_step.py). Not bf16, tf32 or sync_bn: they round or pool differently.
    "fast.data_on_device": "tested equal to the plain step",
    "fast.pretransform": "tested equal to the plain step",
    "fast.foreach_clip": "tested equal to the plain step",
    "fast.fused_optimizer": "tested equal to the plain step",
    "fast.fused_step": "tested equal to the plain step, bit for bit",
    "fast.int8_forward": "tested equal to the plain step, bit for bit",
    "fast.reuse_memory": "an allocator setting",
}


@dataclass(frozen=True)
class Difference:
    key: str
    run: Any      # the run's value; MISSING when the run's recipe lacks the key
    shipped: Any  # the shipped recipe's value; MISSING when it lacks the key

    def describe(self, other: str = "shipped") -> str:
        return f"{self.key}: {_show(self.run)} ({other}: {_show(self.shipped)})"


class _Missing:
    def __repr__(self) -> str:
        return "absent"


MISSING: Any = _Missing()


def _show(value: Any) -> str:
    if value is MISSING:
        return "absent"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def flatten(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train.epochs': 200, ...}: every leaf of a nested mapping by its dotted key."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def experiment(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a resolved recipe that define the experiment, with their values."""
    return {k: v for k, v in flatten(recipe).items() if k not in NEUTRAL_KEYS}


def _same(a: Any, b: Any) -> bool:
    # YAML writes 3.0e-3 and 0.003 alike, but an int and a float of one value must also agree.
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _differing(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[Difference]:
    found = []
    for key in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(key, MISSING), theirs.get(key, MISSING)
        if a is MISSING or b is MISSING or not _same(a, b):
            found.append(Difference(key, a, b))
    return found


def differences(run_recipe: Mapping[str, Any], shipped: Mapping[str, Any]) -> list[Difference]:
    """Every experiment key on which a run's resolved recipe differs from the shipped one, sorted."""
    return _differing(experiment(run_recipe), experiment(shipped))


def all_differences(recipe: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[Difference]:
    """Every key, the neutral ones included, on which two resolved recipes differ, sorted: where a run must
    go on exactly as it was recorded (a resume), a seed or a checkpoint interval matters too."""
    return _differing(flatten(recipe), flatten(recorded))


def variant_difference(dataset: str, variant: str) -> Difference | None:
    """A run on a stand-in (e.g. cifar10-jpeg) is not a run on the paper's dataset."""
    return None if variant == dataset else Difference("dataset variant", variant, dataset)


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [_canonical(v) for v in value] if isinstance(value, list) else value
    return float(value)  # 3 and 3.0 are one value, as in differences()


def experiment_digest(recipe: Mapping[str, Any]) -> str:
    """SHA-256 of the experiment keys: two recipes share it exactly when ``differences`` finds none."""
    canonical = {k: _canonical(v) for k, v in experiment(recipe).items()}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()


def shipped_recipe(name: str) -> dict[str, Any] | None:
    """The resolved shipped recipe of that name as a mapping, or None where no shipped recipe has it."""
    from .recipe import RecipeError, load_recipe, recipes_dir

    path = recipes_dir() / f"{name}.yaml"
    try:
        return load_recipe(path).to_dict() if path.is_file() else None
    except RecipeError:
        return None


def experiment_fields(recipe: Mapping[str, Any], dataset: str, variant: str) -> dict[str, Any]:
    """What a run records so that anyone can tell, from result.json alone, whether it is the shipped experiment:
    its own experiment digest, the shipped recipe's at the time of the run, and the verdict."""
    shipped = shipped_recipe(str(recipe.get("name")))
    ours = experiment_digest(recipe)
    theirs = experiment_digest(shipped) if shipped is not None else None
    return {"experiment_sha256": ours, "shipped_experiment_sha256": theirs,
            "faithful_to_shipped": theirs is not None and ours == theirs and variant == dataset}
