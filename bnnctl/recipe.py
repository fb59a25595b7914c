"""Recipes: YAML files that say everything about a run, validated against one schema.

A recipe names the data, the model, the loss, the optimizer and the schedule; nothing about a
dataset is hard-coded elsewhere. Every field has a type and most have a default, so a recipe
lists what matters and ``resolve`` fills in the rest. The resolved recipe is saved with each
run, which is what makes a run reproducible from its directory alone.

Every field says what values it takes, not only their type: numbers carry their allowed range
(``ge``/``gt``/``le``/``lt``; NaN and infinities are refused), lists their length and the range of
each item, and a field may add a rule of its own (``rule``). A recipe that passes the schema and
``_check_consistency`` builds a model that fits this machine's memory and trains without a
traceback.

Errors are ``RecipeError``: one sentence that names the file and the key, and says what is allowed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .core.losses import LOSSES
from .core.models import ARCHITECTURES
from .core.norms import NORMS
from .data import (DATASET_CLASSES, DATASET_IMAGE_SHAPES, DATASETS, PREPROCESSORS, SPLITTERS, physical_memory,
                   wants_npz)
from .errors import UserError
from .optim import OPTIMIZERS
from .resources import shipped_dir

REQUIRED = object()


class RecipeError(UserError):
    """A recipe the user must fix; the message is one sentence naming the file and key."""


@dataclass
class Field:
    """One recipe value: its types, default, and the values it may take.

    The bounds apply to a number, or to each number in a list (its ``items``): ``low`` and
    ``high`` with ``low_open`` / ``high_open`` for a strict bound. Numbers must be finite. ``length``
    is a list's exact length; ``rule(value)`` returns None, or what is allowed when ``value`` is not.
    """

    types: tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    help: str = ""
    nullable: bool = False
    items: tuple[type, ...] | None = None  # element types when the field is a list
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None
    rule: Callable[[Any], str | None] | None = None

    def range_text(self) -> str:
        """'at least 1', 'greater than 0', 'at least 0 and less than 1', ... ('' when unbounded)."""
        def bound(value: float, open_: bool, word_open: str, word_closed: str) -> str:
            return f"{word_open if open_ else word_closed} {value if isinstance(value, int) else f'{value:g}'}"
        parts = []
        if self.low is not None:
            parts.append(bound(self.low, self.low_open, "greater than", "at least"))
        if self.high is not None:
            parts.append(bound(self.high, self.high_open, "less than", "at most"))
        return " and ".join(parts)

    def in_range(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # strings of a mixed list (model.conv's 'M') have rules of their own
        if not _finite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


def f(types, default=REQUIRED, choices=None, help="", nullable=False, items=None, *, ge=None, gt=None, le=None,
      lt=None, length=None, rule=None) -> Field:
    """A Field; ``ge``/``gt`` (at least / greater than) and ``le``/``lt`` (at most / less than) bound numbers."""
    types = types if isinstance(types, tuple) else (types,)
    return Field(types, default, choices, help, nullable, items,
                 low=gt if gt is not None else ge, high=lt if lt is not None else le,
                 low_open=gt is not None, high_open=lt is not None, length=length, rule=rule)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _odd(value: int) -> str | None:
    return None if value % 2 == 1 else "an odd integer (the convolutions pad by kernel_size // 2 to keep the size)"


NUM = (int, float)
POSITIVE = {"gt": 0}
FRACTION = {"ge": 0, "lt": 1}  # a dropout probability or an Adam beta
SEED_MAX = 2**63 - 2  # torch seeds are 64-bit; the data order's generator is seeded with seed + 1

# The schema: nested dicts of Field. The choices of a dataset, split, preprocessing, architecture,
# norm, loss or optimizer are the keys of the table that holds those entries, beside their code.
SCHEMA: dict[str, Any] = {
    "name": f(str, help="run family; results go to results/<name>/"),
    "description": f(str, ""),
    "reproduces": f(str, "", help="which cell of the paper this recipe reproduces"),
    "paper": {
        "table": f(str, "", help="e.g. 'Table 1'"),
        "row": f(str, "", help="e.g. 'BNN (Theano)'"),
        "test_error": f(NUM, None, nullable=True, ge=0, le=100, help="the paper's test error in %"),
    },
    "seed": f(int, 0, ge=0, le=SEED_MAX),
    "data": {
        "dataset": f(str, choices=tuple(DATASETS)),
        "variant": f(str, None, nullable=True, help="recorded dataset variant; set by the loader"),
        "source": f(str, "auto", choices=("auto", "torchvision", "npz")),
        "npz": f(str, None, nullable=True, help="path of a pre-staged .npz (x_train, y_train, x_test, y_test)"),
        "train_size": f(int, None, nullable=True, ge=1, help="training images taken from the start of train"),
        "valid_size": f(int, ge=1, help="validation images"),
        "split": f(str, "tail", choices=tuple(SPLITTERS), help="how the validation set is cut from train"),
        "preprocess": f(str, "scale", choices=tuple(PREPROCESSORS), help="scale: pixels to [-1, 1]"),
        "limit_train": f(int, None, nullable=True, ge=1, help="debug: use only the first N training images"),
        "limit_test": f(int, None, nullable=True, ge=1, help="debug: use only the first N test images"),
    },
    "model": {
        "arch": f(str, choices=tuple(ARCHITECTURES)),
        "hidden": f(list, [], items=(int,), ge=1, help="MLP hidden widths"),
        "conv": f(list, [], items=(int, str), ge=1, help="ConvNet: channel widths, 'M' = 2x2 max-pool"),
        "fc": f(list, [], items=(int,), ge=1, help="ConvNet: hidden fully connected widths"),
        "kernel_size": f(int, 3, ge=1, rule=_odd),
        "dropout_in": f(NUM, 0.0, **FRACTION),
        "dropout_hidden": f(NUM, 0.0, **FRACTION),
        "bias": f(bool, True),
        "norm": f(str, "bn", choices=tuple(NORMS)),
        "output_norm": f(str, None, nullable=True, choices=tuple(NORMS), help="norm after the output layer; null: model.norm"),
        "bn_eps": f(NUM, 1e-4, **POSITIVE),
        "bn_momentum": f(NUM, 0.1, ge=0, le=1),
        "stochastic_weights": f(bool, False),
        "stochastic_activations": f(bool, False),
    },
    "train": {
        "epochs": f(int, ge=1),
        "batch_size": f(int, ge=1),
        "eval_batch_size": f(int, 1000, ge=1),
        "loss": f(str, "squared_hinge", choices=tuple(LOSSES)),
        "checkpoint_every": f(int, 1, ge=1, help="epochs between checkpoints"),
    },
    "optimizer": {
        "name": f(str, "adam", choices=tuple(OPTIMIZERS)),
        "lr": f(NUM, **POSITIVE),
        "betas": f(list, [0.9, 0.999], items=NUM, length=2, **FRACTION),
        "eps": f(NUM, 1e-8, **POSITIVE),
        "glorot_lr_scale": f(bool, True, help="scale each binary layer's LR by 1/sqrt(1.5/(fan_in+fan_out))"),
        "lr_scale_pow2": f(bool, False, help="shift_adamax: round each binary layer's LR scale to a power of two"),
        "norm_lr_scale": f(bool, False, help="shift_adamax: each BN gamma learns at LR * 1/sqrt(1.5/features)"),
        "clip_all": f(bool, False, help="shift_adamax: clip every parameter, not only binary weights, to [-1, 1]"),
    },
    "schedule": {
        "kind": f(str, "exponential", choices=("exponential", "step", "constant")),
        "lr_final": f(NUM, None, nullable=True, **POSITIVE, help="exponential: LR of the last epoch's successor"),
        "step_epochs": f(int, None, nullable=True, ge=1, help="step: epochs between decays"),
        "epochs": f(int, None, nullable=True, ge=1,
                    help="step: the run length step_epochs is written for; a run of train.epochs decays every "
                         "step_epochs * train.epochs / schedule.epochs epochs (null: every step_epochs)"),
        "gamma": f(NUM, 0.5, **POSITIVE, help="step: factor per decay"),
    },
    "fast": {
        "data_on_device": f(bool, True, help="keep the whole dataset on the training device"),
        "compile": f(bool, False, help="torch.compile the model"),
        "compile_mode": f(str, "default", choices=("default", "reduce-overhead", "max-autotune",
                                                   "max-autotune-no-cudagraphs"),
                          help="torch.compile mode; the CUDA-graph modes are refused on CUDA (see README)"),
        "bf16": f(bool, False, help="bf16 autocast for matmuls/convs (CUDA only); rounds pre-BN sums and gradients"),
        "tf32": f(bool, False, help="TF32 tensor cores for fp32 matmuls (CUDA only); +-1 x +-1 products stay exact"),
        "channels_last": f(bool, False, help="NHWC convolutions (ConvNet only)"),
        "foreach_clip": f(bool, True, help="clip all binary weights in one foreach call"),
        "fused_optimizer": f(bool, False, help="Adam's fused kernel on the CPU too (it is always fused on CUDA)"),
        "pretransform": f(bool, False, help="preprocess the whole dataset once instead of every batch"),
        "sync_bn": f(bool, False, help="several processes: BatchNorm statistics over the global batch"),
        "fused_step": f(bool, False, help="CPU: optimizer update, clipping and binarization of each weight in one "
                                          "C++ pass; the forward reuses those signs"),
        "int8_forward": f(bool, False, help="CPU, with fused_step: layers whose inputs are +-1 (or dropout's 0, "
                                            "+-2) multiply in int8, exactly, where that is faster here"),
        "reuse_memory": f(bool, False, help="CPU: glibc keeps freed memory instead of returning it to the kernel"),
    },
}


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _described(spec: Field, types: tuple[type, ...]) -> str:
    """'at least 1' (an integer), 'a finite number greater than 0', ...: what a value of the right type may be."""
    allowed = spec.range_text()
    if float in types:
        return f"a finite number {allowed}".rstrip()
    return allowed or _type_name(types)


def _check_value(spec: Field, key: str, value: Any, source: str) -> None:
    """The range, length and rule checks of a value whose types are right."""
    if isinstance(value, list):
        if spec.length is not None and len(value) != spec.length:
            raise RecipeError(f"{source}: '{key}' must list exactly {spec.length} values "
                              f"({_described(spec, spec.items or NUM)} each), got {value!r}.")
        bad = [v for v in value if not spec.in_range(v)]
        if bad:
            raise RecipeError(f"{source}: every number in '{key}' must be {_described(spec, spec.items or NUM)}, "
                              f"got {bad[0]!r} in {value!r}.")
    elif not spec.in_range(value):
        raise RecipeError(f"{source}: '{key}' must be {_described(spec, spec.types)}, got {value!r}.")
    if spec.rule is not None:
        allowed = spec.rule(value)
        if allowed:
            raise RecipeError(f"{source}: '{key}' must be {allowed}, got {value!r}.")


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # YAML's true is not a number here
    return isinstance(value, types)


def _validate(node: dict[str, Any], schema: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise RecipeError(f"{source}: '{where or 'the recipe'}' must be a mapping of keys to values.")
    unknown = sorted(set(node) - set(schema), key=str)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise RecipeError(f"{source}: unknown key '{key}' (allowed here: {', '.join(sorted(schema))}).")
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        key = f"{where}.{name}" if where else name
        if isinstance(spec, dict):
            out[name] = _validate(node.get(name, {}), spec, key, source)
            continue
        if name not in node:
            if spec.default is REQUIRED:
                raise RecipeError(f"{source}: missing required key '{key}'.")
            out[name] = copy.deepcopy(spec.default)
            continue
        value = node[name]
        if value is None and (spec.nullable or spec.default is None):
            out[name] = None
            continue
        if not _is_instance(value, spec.types):
            raise RecipeError(f"{source}: '{key}' must be {_type_name(spec.types)}, got {value!r}.")
        if spec.items is not None and any(not _is_instance(v, spec.items) for v in value):
            raise RecipeError(f"{source}: every item of '{key}' must be {_type_name(spec.items)}, got {value!r}.")
        if spec.choices is not None and value not in spec.choices:
            raise RecipeError(f"{source}: '{key}' must be one of {', '.join(map(str, spec.choices))}, got {value!r}.")
        _check_value(spec, key, value, source)
        out[name] = float(value) if float in spec.types and int in spec.types and not isinstance(value, list) else value
    return out


def _check_consistency(r: dict[str, Any], source: str) -> None:
    m, s = r["model"], r["schedule"]
    if m["arch"] == "mlp" and not m["hidden"]:
        raise RecipeError(f"{source}: 'model.hidden' must list the MLP's hidden widths.")
    if m["arch"] == "convnet" and not [c for c in m["conv"] if c != "M"]:
        raise RecipeError(f"{source}: 'model.conv' must list the ConvNet's channel widths.")
    bad = [c for c in m["conv"] if isinstance(c, str) and c != "M"]
    if bad:
        raise RecipeError(f"{source}: 'model.conv' entries must be widths or 'M', got {bad[0]!r}.")
    for before, entry in zip([None, *m["conv"]], m["conv"]):
        if entry == "M" and (before is None or before == "M"):
            raise RecipeError(f"{source}: every 'M' in 'model.conv' must follow a channel width (it max-pools that "
                              f"convolution's output), got {m['conv']!r}.")
    d = r["data"]
    if m["arch"] == "convnet" and not wants_npz(d):
        channels, height, width = DATASET_IMAGE_SHAPES.get(d["dataset"], (1, 1 << 30, 1 << 30))
        pools = m["conv"].count("M")
        if height >> pools < 1 or width >> pools < 1:
            raise RecipeError(f"{source}: the {pools} max-pools of 'model.conv' halve {d['dataset']}'s "
                              f"{height}x{width} images to nothing; use at most "
                              f"{min(height, width).bit_length() - 1}.")
    if s["kind"] == "exponential" and s["lr_final"] is None:
        raise RecipeError(f"{source}: 'schedule.lr_final' is required for an exponential schedule.")
    if s["kind"] == "step" and s["step_epochs"] is None:
        raise RecipeError(f"{source}: 'schedule.step_epochs' is required for a step schedule.")
    if d["source"] == "npz" and not d["npz"]:
        raise RecipeError(f"{source}: 'data.npz' must name a file when 'data.source' is npz.")
    batch = r["train"]["batch_size"]
    for key in ("limit_train", "train_size"):  # the authors' loops drop a partial batch: none would be left
        if d[key] is not None and d[key] < batch:
            raise RecipeError(f"{source}: 'train.batch_size' ({batch}) is larger than the {d[key]} training images "
                              f"'data.{key}' leaves; lower the batch or raise data.{key}.")


# Bytes per parameter while training: float32 weights, their gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16
MAX_PARAMETERS = 2**31  # where the machine's memory is unknown


def estimate_parameters(model: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> int | None:
    """Parameters of the recipe's model, counted from its widths (None for an architecture not known here).

    Weights and biases of every layer and a scale and shift per normalized feature, as
    ``core.models`` builds them; the max-pools halve the image where they stand.
    """
    bias = 1 if model["bias"] else 0
    channels, height, width = input_shape
    total = 0
    if model["arch"] == "mlp":
        widths = [channels * height * width, *model["hidden"]]
    elif model["arch"] == "convnet":
        k, spec = model["kernel_size"], list(model["conv"])
        for i, entry in enumerate(spec):
            if entry == "M":
                continue
            total += channels * entry * k * k + bias * entry + 2 * entry
            channels = entry
            if i + 1 < len(spec) and spec[i + 1] == "M":
                height, width = height // 2, width // 2
        widths = [channels * height * width, *model["fc"]]
    else:
        return None
    for fan_in, fan_out in zip(widths, [*widths[1:], num_classes]):
        total += fan_in * fan_out + bias * fan_out + 2 * fan_out
    return total


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.0f} MiB"


def check_fits_memory(recipe: dict[str, Any], source: str, memory: int | None = None) -> None:
    """Refuse a model whose training state (about 16 bytes per parameter) exceeds this machine's memory.

    The count takes the dataset's original image size; a staged .npz of other images changes the
    first layer's size only.
    """
    d, m = recipe["data"], recipe["model"]
    shape = DATASET_IMAGE_SHAPES.get(d["dataset"])
    count = estimate_parameters(m, shape, DATASET_CLASSES.get(d["dataset"], 10)) if shape else None
    if count is None:
        return
    memory = physical_memory() if memory is None else memory
    need = count * TRAINING_BYTES_PER_PARAMETER
    keys = "'model.hidden'" if m["arch"] == "mlp" else "'model.conv' and 'model.fc'"
    if memory is not None and need > memory:
        raise RecipeError(f"{source}: the model has about {count:,} parameters, whose float32 weights, gradients and "
                          f"Adam state (about {_size(need)}) exceed this machine's {_size(memory)} of memory; "
                          f"use smaller widths in {keys}.")
    if memory is None and count > MAX_PARAMETERS:
        raise RecipeError(f"{source}: the model has about {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                          f"bnnctl trains; use smaller widths in {keys}.")


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.lr=1e-3' -> ('optimizer.lr', 0.001); values are read as YAML."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected key.path=value.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
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
    parts = key.split(".")
    node, schema = raw, SCHEMA
    for i, part in enumerate(parts):
        if not isinstance(schema, dict) or part not in schema:
            raise RecipeError(f"{source}: --set names unknown key '{key}'.")
        schema = schema[part]
        if i < len(parts) - 1:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{source}: --set '{key}' goes through a non-mapping.")
    if isinstance(schema, dict):
        raise RecipeError(f"{source}: --set '{key}' names a section, not a field.")
    node[parts[-1]] = value


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything larger is some other file


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
    class Loader(yaml.SafeLoader):
        pass

    # YAML 1.1 reads 3e-3 (no dot) as a string; recipes mean numbers.
    import re
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return yaml.load(_read_text(path), Loader=Loader)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read, override and validate a recipe; returns the resolved recipe (every field set)."""
    path = find_recipe(path) if Path(path).exists() or Path(path).suffix == "" else Path(path)
    source = str(path)
    if path.is_dir():
        find_recipe(path)  # says it is a folder
    if not path.is_file():
        raise RecipeError(f"recipe file {source} does not exist.")
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


def resolve(raw: dict[str, Any], source: str = "recipe") -> dict[str, Any]:
    recipe = _validate(raw, SCHEMA, "", source)
    _check_consistency(recipe, source)
    return recipe


def dump_recipe(recipe: dict[str, Any]) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)


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
    names = ", ".join(sorted(p.stem for p in recipes_dir().glob("*.yaml")))
    raise RecipeError(f"recipe {text} is neither a file nor a shipped recipe (shipped: {names}).")


def list_recipes(directory: Path | None = None) -> list[RecipeInfo]:
    directory = directory or recipes_dir()
    out = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            r = load_recipe(path)
        except RecipeError:
            continue
        out.append(RecipeInfo(path, r["name"], r["reproduces"], r["paper"]["test_error"]))
    return out
