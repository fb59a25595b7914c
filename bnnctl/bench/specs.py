"""What a model bench needs to know about its model: one ``ModelSpec`` per ``--model`` name.

``model_bench`` is the one driver; a spec says which recipe's architecture the model has, how its
weights are found (a run, an export, or random weights), where its test images are, which variants
are timed, and what its record compares. The specs themselves sit beside their loaders: ``mlp.SPEC``
(``mnist-mlp``) and ``convnet.SPECS`` (``cifar10-convnet``, ``svhn-convnet``).
"""
from __future__ import annotations

import functools

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data import DataError, input_transform
from ..errors import UserError
from ..infer.exported import ExportedModel
from ..infer.variants import ENGINE_VARIANTS
from ..recipe import DataConfig, Recipe, load_recipe, recipes_dir


@dataclass(frozen=True)
class ModelVariant:
    """One way of running the model from 8-bit images to classes: a row of the packed engine's table
    (``engine_row``) or the float model in torch."""

    label: str
    engine_variant: str | None = None  # the packed engine's variant (infer.variants.ENGINE_VARIANTS); None: torch
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtype: torch.dtype = torch.float32  # torch variants
    channels_last: bool = False  # torch variants: channels-last memory format
    int8_hidden: bool = False  # torch variants: the binary hidden layers on torch._int_mm (+-1 bytes, exact)
    exact: bool = True  # computes exactly what the fp32 float model does: its predictions must equal it
    paper_row: str = ""  # the paper's name for it, where it has one: (a), (b), ...

    @property
    def engine(self) -> bool:
        return self.engine_variant is not None

    def _engine_field(self, name: str) -> str | None:
        return getattr(ENGINE_VARIANTS[self.engine_variant], name) if self.engine else None

    @property
    def first_layer(self) -> str | None:
        return self._engine_field("first_layer")

    @property
    def hidden(self) -> str | None:
        return self._engine_field("hidden")

    @property
    def xnor_impl(self) -> str | None:
        return self._engine_field("xnor_impl")

    @property
    def packed(self) -> bool:
        """On the packed engine with XNOR hidden layers (not the paper's float baseline kernel)."""
        return self.engine and self.hidden == "xnor"


def engine_row(name: str, paper_row: str = "") -> ModelVariant:
    """The bench's variant for a row of the engine's table: its description, devices and exactness."""
    v = ENGINE_VARIANTS[name]
    return ModelVariant(v.description, engine_variant=name, devices=v.devices, exact=v.exact, paper_row=paper_row)


@dataclass
class LoadedModel:
    exported: ExportedModel  # what the packed engine runs
    float_model: nn.Module  # the float model in torch, eval mode, on the CPU
    info: dict[str, Any]  # the record's model section: source, weights, epoch, preprocess, ...
    data_cfg: DataConfig  # the model's recipe data section: its dataset and its preprocessing


@dataclass
class TestImages:
    x: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor | None  # labels; None for random images
    info: dict[str, Any]  # the record's data section: images, source, dataset (None: random images)
    transform: Callable[[torch.Tensor], torch.Tensor]  # the model's own preprocessing of these uint8 images


def model_transform(data_cfg: DataConfig, root: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's preprocessing (its recipe's ``data.preprocess``) as a transform of uint8 images, fitted where it
    is fitted on the training images it names under ``root``; a UserError (one sentence) where they are not there."""
    try:
        return input_transform(data_cfg, root)
    except DataError as e:
        raise UserError(f"the model was trained on inputs preprocessed as {data_cfg.preprocess!r}, fitted on its "
                        f"training images, which bnnctl cannot read under {root}: {str(e).rstrip('.')}.") from None


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the --model name, and the record's kind
    title: str  # for the table's title
    recipe_file: str  # the shipped recipe whose architecture the model has
    input_shape: tuple[int, int, int]
    num_classes: int
    variants: dict[str, ModelVariant]
    # (spec, --run or None, results folder) -> the model
    load_model: Callable[["ModelSpec", Path | None, Path], LoadedModel]
    # (spec, data root or None, the model's recipe data section, count) -> the first count test images
    load_images: Callable[["ModelSpec", Path | None, dict, int], TestImages]
    architecture: Callable[["ModelSpec", LoadedModel], str]  # e.g. 784-4096-4096-4096-10
    batch: Callable[[str, ExportedModel], int]  # (device type, export) -> images per call
    images: int = 10_000  # test images timed by default
    images_option: bool = False  # whether --images may choose fewer
    ratios: dict[str, str] = field(default_factory=dict)  # record key -> the variant whose time it divides
    differing_key: str = "predictions_differing_from_float"  # record key of each variant's disagreements
    # (variants that ran, device type) -> the spec's own targets (e.g. the paper's ratios)
    extra_targets: Callable[[dict[str, dict], str], dict] | None = None
    reference: str = "torch"  # the fp32 float model: the predictions every exact variant must reproduce

    def recipe(self) -> Recipe:
        """The resolved shipped recipe whose model this bench runs (read once per process)."""
        return _shipped(self.recipe_file)

    def torch_variants(self) -> list[str]:
        return [name for name, v in self.variants.items() if not v.engine]


__all__ = ["ModelVariant", "LoadedModel", "TestImages", "ModelSpec", "engine_row", "model_transform"]


@functools.cache
def _shipped(recipe_file: str) -> Recipe:
    return load_recipe(recipes_dir() / recipe_file)
