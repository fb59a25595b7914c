"""What shell completion offers for bnnctl's arguments (``bnnctl --install-completion``).

Recipes complete to the YAML files under ``recipes/`` (and in any folder typed so far) and to the
shipped recipes' names; ``--device``, ``--split``, ``--engine``, ``--model``, ``--variant`` and
``--kernel`` to the names their commands accept. Those names come from the tables the commands check
against, imported only when a completion asks for them (``bnnctl --help`` stays free of torch), so a
completion never offers a name the command refuses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

RECIPE_SUFFIXES = (".yaml", ".yml")


def _starting_with(incomplete: str, candidates: Iterable[str]) -> list[str]:
    return [c for c in dict.fromkeys(candidates) if c.startswith(incomplete)]


def _folder_entries(folder: Path, prefix: str) -> list[str]:
    """``prefix`` + each recipe file of ``folder`` and each folder in it (ending in '/'), sorted."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [f"{prefix}{p.name}/" if p.is_dir() else f"{prefix}{p.name}" for p in entries
            if not p.name.startswith(".") and (p.is_dir() or p.suffix in RECIPE_SUFFIXES)]


def recipes(incomplete: str) -> list[str]:
    """Recipe files and shipped recipe names that start with ``incomplete``.

    A path with a folder in it completes within that folder (its recipe files and subfolders); a bare
    word completes to ``recipes/<file>`` of the working directory, the recipe files beside it and the
    shipped recipes' names (``bnnctl train mnist`` reads the shipped recipes/mnist.yaml).
    """
    head, slash, _ = incomplete.rpartition("/")
    if slash:
        return _starting_with(incomplete, _folder_entries(Path(head or "/").expanduser(), head + "/"))
    from .resources import shipped_dir
    local = [c for c in _folder_entries(Path("recipes"), "recipes/") if not c.endswith("/")]
    here = [c for c in _folder_entries(Path("."), "") if not c.endswith("/")]
    shipped = [p.stem for p in sorted(shipped_dir("recipes").glob("*.yaml"))]
    return _starting_with(incomplete, [*local, *here, *shipped])


def _comma_list(incomplete: str, names: Iterable[str]) -> list[str]:
    """Completions of the last item of a comma list ("xnor,bit" -> "xnor,bitplane"); 'all' alone."""
    done, comma, last = incomplete.rpartition(",")
    chosen = set(done.split(",")) if comma else set()
    choices = [n for n in names if n not in chosen] if comma else ["all", *names]
    return [f"{done}{comma}{n}" for n in choices if n.startswith(last)]


def devices(incomplete: str) -> list[str]:
    from .provenance import DEVICES
    return _starting_with(incomplete, DEVICES)


def splits(incomplete: str) -> list[str]:
    from .infer.evaluate import SPLITS
    return _starting_with(incomplete, SPLITS)


def engines(incomplete: str) -> list[str]:
    from .infer.evaluate import ENGINES
    return _starting_with(incomplete, ENGINES)


def bench_models(incomplete: str) -> list[str]:
    from .bench.model_bench import SPECS
    return _starting_with(incomplete, SPECS)


def bench_variants(ctx, incomplete: str) -> list[str]:
    """The variants of the --model given before --variant, else those of every model."""
    from .bench.model_bench import SPECS
    model = ctx.params.get("model")
    specs = [SPECS[model]] if model in SPECS else SPECS.values()
    return _comma_list(incomplete, dict.fromkeys(name for spec in specs for name in spec.variants))


def bench_kernels(incomplete: str) -> list[str]:
    from .bench.kernels import KERNELS
    return _comma_list(incomplete, KERNELS)


def engine_variants(incomplete: str) -> list[str]:
    from .infer.variants import AUTO, ENGINE_VARIANTS
    return _starting_with(incomplete, [AUTO, *ENGINE_VARIANTS])
