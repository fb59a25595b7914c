"""Recipe files: found by path or shipped name, read as YAML, overridden by ``--set``, resolved.

A recipe names the data, the model, the loss, the optimizer and the schedule; nothing about a
dataset is hard-coded elsewhere. Every field has a type and most have a default, so a recipe
lists what matters and ``resolve`` fills in the rest. The resolved recipe is saved with each
run (``dump_recipe``), which is what makes a run reproducible from its directory alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import did_you_mean, suggestion
from ..resources import shipped_dir
from .checks import check_fits_memory, resolve
from .fields import RecipeError, clipped, excerpt
from .schema import SCHEMA, Recipe, closest_key


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.lr=1e-3' -> ('optimizer.lr', 0.001); values are read as YAML."""
    if "=" not in text:
        raise RecipeError(f"--set {excerpt(text)}: expected key.path=value.")
    key, raw = text.split("=", 1)
    try:  # read as a recipe file is, within the same bounds
        value = RecipeLoader.read(raw, f"--set {clipped(key.strip())}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads '1e-3' as a string; accept it as the number a user means.
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def apply_override(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts, key = key.split("."), clipped(key)
    node, schema = raw, SCHEMA
    for i, part in enumerate(parts):
        if not isinstance(schema, dict) or part not in schema:
            raise RecipeError(f"{source}: --set names unknown key '{key}'"
                              f"{suggestion(closest_key(key), ' (bnnctl keys lists them).')}")
        schema = schema[part]
        if i < len(parts) - 1:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{source}: --set '{key}' goes through a non-mapping.")
    if isinstance(schema, dict):
        raise RecipeError(f"{source}: --set '{key}' names a section, not a field.")
    node[parts[-1]] = value


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything larger is some other file
# A recipe is a few dozen values two levels deep and needs an alias or two at most. The nodes are
# counted with every alias expanded, as the recipe's checks walk them: an alias chain (YAML's
# "billion laughs") is a few lines of text whose expansion is astronomically large.
MAX_RECIPE_ALIASES = 100
MAX_RECIPE_DEPTH = 20
MAX_RECIPE_NODES = 100_000


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the recipe's bounds, checked while the document is composed.

    It counts aliases, nesting and nodes (an alias counts as the nodes it stands for) and refuses
    a document past ``MAX_RECIPE_ALIASES``, ``MAX_RECIPE_DEPTH`` or ``MAX_RECIPE_NODES`` before
    anything is built from it. Numbers like 3e-3 (no dot) read as numbers, which YAML 1.1 reads as strings.
    """

    def __init__(self, stream: str, source: str = "recipe"):
        super().__init__(stream)
        self.source = source
        self.aliases = self.depth = self.nodes = 0
        self.expanded: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    @classmethod
    def read(cls, text: str, source: str) -> Any:
        loader = cls(text, source)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()

    def _refuse(self, limit: str, mark) -> None:
        raise RecipeError(f"{self.source}: line {mark.line + 1} goes past {limit}, far more than any recipe needs.")

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        is_alias = self.check_event(yaml.AliasEvent)
        if is_alias:
            self.aliases += 1
            if self.aliases > MAX_RECIPE_ALIASES:
                self._refuse(f"{MAX_RECIPE_ALIASES} YAML aliases (*name)", mark)
        self.depth += 1
        if self.depth > MAX_RECIPE_DEPTH:
            self._refuse(f"{MAX_RECIPE_DEPTH} levels of nesting", mark)
        before = self.nodes
        node = super().compose_node(parent, index)
        self.depth -= 1
        if is_alias:  # the anchored node counts again wherever an alias repeats it
            self.nodes = before + self.expanded.get(id(node), 1)
        else:
            self.nodes += 1
            self.expanded[id(node)] = self.nodes - before
        if self.nodes > MAX_RECIPE_NODES:
            self._refuse(f"{MAX_RECIPE_NODES:,} values (its YAML aliases expanded)", mark)
        return node


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_text(path: Path) -> str:
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{source} is {size:,} bytes, too large for a recipe (a YAML text file of a few "
                              f"kilobytes); is it the right file?")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{source} is not a text file (it is not valid UTF-8); a recipe is a YAML text file, "
                          f"e.g. recipes/mnist.yaml.") from None
    except OSError as e:
        raise RecipeError(f"recipe file {source} cannot be read ({e.strerror or type(e).__name__}).") from None


def _yaml_load(path: Path) -> Any:
    return RecipeLoader.read(_read_text(path), str(path))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; returns the resolved recipe (every field set)."""
    path = find_recipe(path) if Path(path).exists() or Path(path).suffix == "" else Path(path)
    source = str(path)
    if path.is_dir():
        find_recipe(path)  # says it is a folder
    if not path.is_file():
        raise RecipeError(f"recipe file {source} does not exist{_closest_recipe(path, '.')}")
    try:
        raw = _yaml_load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{source}: not valid YAML{at}.") from None
    except RecursionError:
        raise RecipeError(f"{source}: not valid YAML (nested too deeply).") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys to values.")
    raw.setdefault("name", path.stem)
    for item in overrides or []:
        key, value = parse_override(item)
        apply_override(raw, key, value, source)
    recipe = resolve(raw, source)
    check_fits_memory(recipe, source)
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The text of a run's ``recipe.yaml``: every field, in the schema's order."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


@dataclass
class RecipeInfo:
    path: Path
    name: str
    reproduces: str
    paper_error: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def recipes_dir() -> Path:
    return shipped_dir("recipes")


def find_recipe(text: str | Path) -> Path:
    """A recipe file, or a shipped recipe by name ("mnist" is recipes/mnist.yaml)."""
    path = Path(text)
    if path.is_file():
        return path
    if path.is_dir():
        raise RecipeError(f"{text} is a folder; give a recipe file (e.g. recipes/mnist.yaml) or a shipped recipe's name.")
    shipped = recipes_dir() / f"{path.name}.yaml"
    if path.suffix == "" and len(path.parts) == 1 and shipped.is_file():
        return shipped
    shipped = f" (shipped: {', '.join(_shipped_names())})."
    raise RecipeError(f"recipe {text} is neither a file nor a shipped recipe{_closest_recipe(path, shipped)}")


def _shipped_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _closest_recipe(path: Path, otherwise: str) -> str:
    """'; did you mean ...?' with the recipe file in the folder ``path`` names that is closest to it, else the
    shipped recipe whose name is closest to its name; ``otherwise`` where none is close."""
    try:
        beside = [str(path.parent / p.name) for p in sorted(path.parent.iterdir()) if p.suffix in (".yaml", ".yml")]
    except OSError:
        beside = []
    return did_you_mean(path, beside, "") or did_you_mean(path.stem, _shipped_names(), otherwise)


def list_recipes(directory: Path | None = None) -> list[RecipeInfo]:
    directory = directory or recipes_dir()
    out = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            r = load_recipe(path)
        except RecipeError:
            continue
        out.append(RecipeInfo(path, r.name, r.reproduces, r.paper.test_error))
    return out
