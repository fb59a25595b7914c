"""Recipes: YAML files that say everything about a run, validated against one schema.

A recipe names the data, the model, the loss, the optimizer and the schedule; nothing about a
dataset is hard-coded elsewhere. Every field has a type and most have a default, so a recipe
lists what matters and ``resolve`` fills in the rest. The resolved recipe is saved with each
run, which is what makes a run reproducible from its directory alone.

Errors are ``RecipeError``: one sentence that names the file and the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .core.losses import LOSSES
from .core.models import ARCHITECTURES
from .core.norms import NORMS
from .data import DATASETS, PREPROCESSORS, SPLITTERS
from .errors import UserError
from .optim import OPTIMIZERS

REQUIRED = object()


class RecipeError(UserError):
    """A recipe the user must fix; the message is one sentence naming the file and key."""


@dataclass
class Field:
    types: tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    help: str = ""
    nullable: bool = False
    items: tuple[type, ...] | None = None  # element types when the field is a list


def f(types, default=REQUIRED, choices=None, help="", nullable=False, items=None) -> Field:
    types = types if isinstance(types, tuple) else (types,)
    return Field(types, default, choices, help, nullable, items)


NUM = (int, float)

# The schema: nested dicts of Field. The choices of a dataset, split, preprocessing, architecture,
# norm, loss or optimizer are the keys of the table that holds those entries, beside their code.
SCHEMA: dict[str, Any] = {
    "name": f(str, help="run family; results go to results/<name>/"),
    "description": f(str, ""),
    "reproduces": f(str, "", help="which cell of the paper this recipe reproduces"),
    "paper": {
        "table": f(str, "", help="e.g. 'Table 1'"),
        "row": f(str, "", help="e.g. 'BNN (Theano)'"),
        "test_error": f(NUM, None, nullable=True, help="the paper's test error in %"),
    },
    "seed": f(int, 0),
    "data": {
        "dataset": f(str, choices=tuple(DATASETS)),
        "variant": f(str, None, nullable=True, help="recorded dataset variant; set by the loader"),
        "source": f(str, "auto", choices=("auto", "torchvision", "npz")),
        "npz": f(str, None, nullable=True, help="path of a pre-staged .npz (x_train, y_train, x_test, y_test)"),
        "train_size": f(int, None, nullable=True, help="training images taken from the start of train"),
        "valid_size": f(int, help="validation images"),
        "split": f(str, "tail", choices=tuple(SPLITTERS), help="how the validation set is cut from train"),
        "preprocess": f(str, "scale", choices=tuple(PREPROCESSORS), help="scale: pixels to [-1, 1]"),
        "limit_train": f(int, None, nullable=True, help="debug: use only the first N training images"),
        "limit_test": f(int, None, nullable=True, help="debug: use only the first N test images"),
    },
    "model": {
        "arch": f(str, choices=tuple(ARCHITECTURES)),
        "hidden": f(list, [], items=(int,), help="MLP hidden widths"),
        "conv": f(list, [], items=(int, str), help="ConvNet: channel widths, 'M' = 2x2 max-pool"),
        "fc": f(list, [], items=(int,), help="ConvNet: hidden fully connected widths"),
        "kernel_size": f(int, 3),
        "dropout_in": f(NUM, 0.0),
        "dropout_hidden": f(NUM, 0.0),
        "bias": f(bool, True),
        "norm": f(str, "bn", choices=tuple(NORMS)),
        "output_norm": f(str, None, nullable=True, choices=tuple(NORMS), help="norm after the output layer; null: model.norm"),
        "bn_eps": f(NUM, 1e-4),
        "bn_momentum": f(NUM, 0.1),
        "stochastic_weights": f(bool, False),
        "stochastic_activations": f(bool, False),
    },
    "train": {
        "epochs": f(int),
        "batch_size": f(int),
        "eval_batch_size": f(int, 1000),
        "loss": f(str, "squared_hinge", choices=tuple(LOSSES)),
        "checkpoint_every": f(int, 1, help="epochs between checkpoints"),
    },
    "optimizer": {
        "name": f(str, "adam", choices=tuple(OPTIMIZERS)),
        "lr": f(NUM),
        "betas": f(list, [0.9, 0.999], items=NUM),
        "eps": f(NUM, 1e-8),
        "glorot_lr_scale": f(bool, True, help="scale each binary layer's LR by 1/sqrt(1.5/(fan_in+fan_out))"),
        "lr_scale_pow2": f(bool, False, help="shift_adamax: round each binary layer's LR scale to a power of two"),
        "norm_lr_scale": f(bool, False, help="shift_adamax: each BN gamma learns at LR * 1/sqrt(1.5/features)"),
        "clip_all": f(bool, False, help="shift_adamax: clip every parameter, not only binary weights, to [-1, 1]"),
    },
    "schedule": {
        "kind": f(str, "exponential", choices=("exponential", "step", "constant")),
        "lr_final": f(NUM, None, nullable=True, help="exponential: LR of the last epoch's successor"),
        "step_epochs": f(int, None, nullable=True, help="step: epochs between decays"),
        "epochs": f(int, None, nullable=True,
                    help="step: the run length step_epochs is written for; a run of train.epochs decays every "
                         "step_epochs * train.epochs / schedule.epochs epochs (null: every step_epochs)"),
        "gamma": f(NUM, 0.5, help="step: factor per decay"),
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


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # YAML's true is not a number here
    return isinstance(value, types)


def _validate(node: dict[str, Any], schema: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise RecipeError(f"{source}: '{where or 'the recipe'}' must be a mapping of keys to values.")
    unknown = sorted(set(node) - set(schema))
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
    if s["kind"] == "exponential" and s["lr_final"] is None:
        raise RecipeError(f"{source}: 'schedule.lr_final' is required for an exponential schedule.")
    if s["kind"] == "step" and s["step_epochs"] is None:
        raise RecipeError(f"{source}: 'schedule.step_epochs' is required for a step schedule.")
    for key in ("step_epochs", "epochs"):
        if s[key] is not None and s[key] < 1:
            raise RecipeError(f"{source}: 'schedule.{key}' must be at least 1.")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if r["train"][key] < 1:
            raise RecipeError(f"{source}: 'train.{key}' must be at least 1.")
    if r["data"]["source"] == "npz" and not r["data"]["npz"]:
        raise RecipeError(f"{source}: 'data.npz' must name a file when 'data.source' is npz.")


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
    return yaml.load(path.read_text(), Loader=Loader)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read, override and validate a recipe; returns the resolved recipe (every field set)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {source} does not exist.")
    try:
        raw = _yaml_load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{source}: not valid YAML{at}.") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys to values.")
    raw.setdefault("name", path.stem)
    for item in overrides or []:
        key, value = parse_override(item)
        apply_override(raw, key, value, source)
    return resolve(raw, source)


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
    return Path(__file__).resolve().parent.parent / "recipes"


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
