"""The recipe's sections as frozen dataclasses: each value's type, default, allowed values and help.

A resolved recipe is a ``Recipe``: read ``recipe.train.epochs``. Lists are tuples, so that no
part of a resolved recipe can change; ``to_dict`` gives the plain mapping that ``recipe.yaml`` and
the checkpoints hold. The choices of a dataset, split, preprocessing, architecture, norm, loss or
optimizer are the keys of the table that holds those entries, beside their code.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.losses import LOSSES
from ..core.models import ARCHITECTURES
from ..core.norms import NORMS
from ..data import DATASETS, PREPROCESSORS, SPLITTERS
from ..optim import OPTIMIZERS
from .fields import FRACTION, NUM, POSITIVE, Field, option

SEED_MAX = 2**63 - 2  # torch seeds are 64-bit; the data order's generator is seeded with seed + 1


def _odd(value: int) -> str | None:
    return None if value % 2 == 1 else "an odd integer (the convolutions pad by kernel_size // 2 to keep the size)"


@dataclass(frozen=True, kw_only=True)
class Section:
    """A part of the recipe; its fields carry their ``Field`` in ``metadata['field']``."""

    def to_dict(self) -> dict[str, Any]:
        """The plain mapping, in declaration order, lists as lists: what ``recipe.yaml`` holds."""
        return {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, kw_only=True)
class PaperConfig(Section):
    table: str = option(str, "", help="e.g. 'Table 1'")
    row: str = option(str, "", help="e.g. 'BNN (Theano)'")
    test_error: float | None = option(NUM, None, nullable=True, ge=0, le=100, help="the paper's test error in %")


@dataclass(frozen=True, kw_only=True)
class DataConfig(Section):
    dataset: str = option(str, choices=tuple(DATASETS))
    variant: str | None = option(str, None, nullable=True, help="recorded dataset variant; set by the loader")
    source: str = option(str, "auto", choices=("auto", "torchvision", "npz"))
    npz: str | None = option(str, None, nullable=True, help="path of a pre-staged .npz (x_train, y_train, x_test, "
                                                              "y_test)")
    train_size: int | None = option(int, None, nullable=True, ge=1, help="training images taken from the start of "
                                                                          "train (fewer shorten a run)")
    valid_size: int = option(int, ge=1, help="validation images")
    split: str = option(str, "tail", choices=tuple(SPLITTERS), help="how the validation set is cut from train")
    preprocess: str = option(str, "scale", choices=tuple(PREPROCESSORS), help="scale: pixels to [-1, 1]")
    limit_train: int | None = option(int, None, nullable=True, ge=1, help="shortens a run: only the first N "
                                                                           "training and validation images")
    limit_test: int | None = option(int, None, nullable=True, ge=1, help="shortens a run: only the first N test "
                                                                          "images")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Section):
    arch: str = option(str, choices=tuple(ARCHITECTURES))
    hidden: tuple[int, ...] = option(list, [], items=(int,), ge=1, help="MLP hidden widths")
    conv: tuple[int | str, ...] = option(list, [], items=(int, str), ge=1,
                                         help="ConvNet: channel widths, 'M' = 2x2 max-pool")
    fc: tuple[int, ...] = option(list, [], items=(int,), ge=1, help="ConvNet: hidden fully connected widths")
    kernel_size: int = option(int, 3, ge=1, rule=_odd, help="ConvNet: an odd size (the convolutions pad by "
                                                            "kernel_size // 2)")
    dropout_in: float = option(NUM, 0.0, **FRACTION)
    dropout_hidden: float = option(NUM, 0.0, **FRACTION)
    bias: bool = option(bool, True)
    norm: str = option(str, "bn", choices=tuple(NORMS))
    output_norm: str | None = option(str, None, nullable=True, choices=tuple(NORMS),
                                     help="norm after the output layer; null: model.norm")
    bn_eps: float = option(NUM, 1e-4, **POSITIVE)
    bn_momentum: float = option(NUM, 0.1, ge=0, le=1)
    stochastic_weights: bool = option(bool, False)
    stochastic_activations: bool = option(bool, False)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Section):
    epochs: int = option(int, ge=1, help="epochs to train; fewer shorten a run (the LR schedule is compressed to "
                                         "fit, see schedule.epochs)")
    batch_size: int = option(int, ge=1)
    eval_batch_size: int = option(int, 1000, ge=1)
    loss: str = option(str, "squared_hinge", choices=tuple(LOSSES))
    checkpoint_every: int = option(int, 1, ge=1, help="epochs between checkpoints")


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig(Section):
    name: str = option(str, "adam", choices=tuple(OPTIMIZERS))
    lr: float = option(NUM, **POSITIVE)
    betas: tuple[float, float] = option(list, [0.9, 0.999], items=NUM, length=2, **FRACTION)
    eps: float = option(NUM, 1e-8, **POSITIVE)
    glorot_lr_scale: bool = option(bool, True, help="scale each binary layer's LR by 1/sqrt(1.5/(fan_in+fan_out))")
    lr_scale_pow2: bool = option(bool, False, help="shift_adamax: round each binary layer's LR scale to a power "
                                                   "of two")
    norm_lr_scale: bool = option(bool, False, help="shift_adamax: each BN gamma learns at LR * 1/sqrt(1.5/features)")
    clip_all: bool = option(bool, False, help="shift_adamax: clip every parameter, not only binary weights, to "
                                              "[-1, 1]")


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig(Section):
    kind: str = option(str, "exponential", choices=("exponential", "step", "constant"))
    lr_final: float | None = option(NUM, None, nullable=True, **POSITIVE,
                                    help="exponential: LR of the last epoch's successor")
    step_epochs: int | None = option(int, None, nullable=True, ge=1, help="step: epochs between decays")
    epochs: int | None = option(int, None, nullable=True, ge=1,
                                help="step: the run length step_epochs is written for; a run of train.epochs decays "
                                     "every step_epochs * train.epochs / schedule.epochs epochs (null: every "
                                     "step_epochs)")
    gamma: float = option(NUM, 0.5, **POSITIVE, help="step: factor per decay")


@dataclass(frozen=True, kw_only=True)
class FastConfig(Section):
    data_on_device: bool = option(bool, True, help="keep the whole dataset on the training device")
    compile: bool = option(bool, False, help="torch.compile the model")
    compile_mode: str = option(str, "default", choices=("default", "reduce-overhead", "max-autotune",
                                                        "max-autotune-no-cudagraphs"),
                               help="torch.compile mode; the CUDA-graph modes are refused on CUDA (see README)")
    bf16: bool = option(bool, False, help="bf16 autocast for matmuls/convs (CUDA only); rounds pre-BN sums and "
                                          "gradients")
    tf32: bool = option(bool, False, help="TF32 tensor cores for fp32 matmuls (CUDA only); +-1 x +-1 products stay "
                                          "exact")
    channels_last: bool = option(bool, False, help="NHWC convolutions (ConvNet only)")
    foreach_clip: bool = option(bool, True, help="clip all binary weights in one foreach call")
    fused_optimizer: bool = option(bool, False, help="Adam's fused kernel on the CPU too (it is always fused on "
                                                     "CUDA)")
    pretransform: bool = option(bool, False, help="preprocess the whole dataset once instead of every batch")
    sync_bn: bool = option(bool, False, help="several processes: BatchNorm statistics over the global batch")
    fused_step: bool = option(bool, False, help="CPU: optimizer update, clipping and binarization of each weight in "
                                                "one C++ pass; the forward reuses those signs")
    int8_forward: bool = option(bool, False, help="CPU, with fused_step: layers whose inputs are +-1 (or dropout's "
                                                  "0, +-2) multiply exactly in integers (int8, or XNOR-popcount for "
                                                  "+-1) where that is faster here")
    reuse_memory: bool = option(bool, False, help="CPU: glibc keeps freed memory instead of returning it to the "
                                                  "kernel")


@dataclass(frozen=True, kw_only=True)
class Recipe(Section):
    """A resolved recipe: every field set, every value checked (``bnnctl.recipe.resolve``)."""

    SECTIONS: ClassVar[dict[str, type[Section]]] = {
        "paper": PaperConfig, "data": DataConfig, "model": ModelConfig, "train": TrainConfig,
        "optimizer": OptimizerConfig, "schedule": ScheduleConfig, "fast": FastConfig}

    name: str = option(str, help="run family; results go to results/<name>/")
    description: str = option(str, "")
    reproduces: str = option(str, "", help="which cell of the paper this recipe reproduces")
    paper: PaperConfig
    seed: int = option(int, 0, ge=0, le=SEED_MAX)
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    fast: FastConfig


def schema_of(cls: type[Section]) -> dict[str, Any]:
    """A section's schema: its values' ``Field`` by name, a nested section as its own schema."""
    sections = getattr(cls, "SECTIONS", {})
    return {item.name: schema_of(sections[item.name]) if item.name in sections else item.metadata["field"]
            for item in dataclasses.fields(cls)}


# The schema as nested dicts of Field, in the recipe's order (what --set and the docs walk).
SCHEMA: dict[str, Any] = schema_of(Recipe)


def closest_key(key: str, schema: dict[str, Any] = SCHEMA) -> str | None:
    """The recipe key closest to a mistyped one, part by part ('optimzer.lr' -> 'optimizer.lr', 'model.hiden' ->
    'model.hidden'): each part that is no key where it stands replaced by the closest that is
    (``difflib.get_close_matches``); None where some part is close to none, or the key goes past a value."""
    found = []
    for part in key.split("."):
        if not isinstance(schema, dict):
            return None
        close = [part] if part in schema else difflib.get_close_matches(part, list(schema), n=1)
        if not close:
            return None
        found.append(close[0])
        schema = schema[close[0]]
    return ".".join(found)


def flat_schema(schema: dict[str, Any] = SCHEMA, prefix: str = "") -> dict[str, Field]:
    """Every value of the recipe by its dotted key ('train.epochs'), in the recipe's order."""
    flat: dict[str, Field] = {}
    for name, item in schema.items():
        if isinstance(item, dict):
            flat.update(flat_schema(item, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = item
    return flat
