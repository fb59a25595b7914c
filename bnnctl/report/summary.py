"""Per-layer accounting of a recipe's model: output shape, weight bits and multiply-accumulates.

``bnnctl summary RECIPE`` prints it (in the spirit of Larq's model summary), and ``bnnctl report``
builds its memory and energy table on it. The model is built on PyTorch's meta device, so even the
MNIST MLP's 54M-parameter model costs no memory and no time, and shapes come from a forward pass
of a shape-only tensor, not from formulas that could drift from ``models.py``.

Conventions:

* A layer's *stored values* are its parameters plus its floating-point buffers (BN running mean and
  variance): what inference needs. The ±1 weights of a binary layer take 1 bit each in the binarized
  network; every other value (biases, BN) takes 32 bits, as in the float32 network.
* MACs per image of a linear layer: in x out; of a convolution: output elements x (in channels x k x k),
  border positions included (a dense kernel multiplies the zero padding too).
* A MAC is *binary* (an XNOR-popcount bit operation) when both its weight and its input are ±1: a
  binary layer whose input comes from a sign activation (through max-pooling, flattening or dropout,
  which keep ±1 values ±1). The first layer sees real pixels, so its MACs are real-input MACs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.layers import BinaryLayer, SignActivation
from ..core.models import build_model
from ..data import DATASET_CLASSES, DATASET_IMAGE_SHAPES
from ..recipe import Recipe, RecipeError, find_recipe, load_recipe

# Modules that pass ±1 values on as ±1 values (at inference).
_KEEPS_BINARY = (nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class LayerInfo:
    index: int
    kind: str                      # the module's class name
    output_shape: tuple[int, ...]  # per image, without the batch dimension
    values: int                    # parameters + floating-point buffers
    binary_weights: int            # entries of the layer's ±1 weight tensor (0: not a binary layer)
    macs: int                      # multiply-accumulates per image
    binary_input: bool             # the layer's input is ±1
    kernel_size: tuple[int, ...] | None = None

    @property
    def bnn_bits(self) -> int:
        return self.binary_weights + 32 * (self.values - self.binary_weights)

    @property
    def float_bits(self) -> int:
        return 32 * self.values

    @property
    def binary_macs(self) -> int:
        return self.macs if self.binary_weights and self.binary_input else 0

    @property
    def real_macs(self) -> int:
        return self.macs - self.binary_macs


@dataclass(frozen=True)
class ModelSummary:
    recipe: str
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: tuple[LayerInfo, ...]

    def total(self, attribute: str) -> int:
        return sum(getattr(layer, attribute) for layer in self.layers)


def _stored_values(module: nn.Module) -> int:
    params = sum(p.numel() for p in module.parameters(recurse=False))
    buffers = sum(b.numel() for b in module.buffers(recurse=False) if b.is_floating_point())
    return params + buffers


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups
        for k in module.kernel_size:
            per_output *= k
        return output[0].numel() * per_output
    return 0


@torch.no_grad()
def summarize_model(model: nn.Sequential, input_shape: tuple[int, ...]) -> tuple[LayerInfo, ...]:
    """One LayerInfo per module of a flat Sequential (meta or real tensors), in order."""
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    x = torch.empty((1, *input_shape), device=device)
    binary = False
    out: list[LayerInfo] = []
    for index, module in enumerate(model):
        y = module(x)
        is_binary = isinstance(module, BinaryLayer)
        out.append(LayerInfo(
            index=index, kind=type(module).__name__, output_shape=tuple(y.shape[1:]),
            values=_stored_values(module),
            binary_weights=module.weight.numel() if is_binary else 0,
            macs=_macs(module, y), binary_input=binary,
            kernel_size=tuple(module.kernel_size) if isinstance(module, nn.modules.conv._ConvNd) else None))
        if isinstance(module, SignActivation):
            binary = True
        elif not isinstance(module, _KEEPS_BINARY):
            binary = False
        x = y
    model.train(was_training)
    return tuple(out)


def dataset_shape(dataset: str, source: str) -> tuple[tuple[int, int, int], int]:
    """The image shape (C, H, W) of the dataset's original files and its class count: the model's size depends
    on them, and the summary must not need the data on disk."""
    if dataset not in DATASET_IMAGE_SHAPES:
        raise RecipeError(f"{source}: no image shape is known for dataset '{dataset}' "
                          f"(known: {', '.join(sorted(DATASET_IMAGE_SHAPES))}).")
    return DATASET_IMAGE_SHAPES[dataset], DATASET_CLASSES[dataset]


def summarize_recipe(recipe: Recipe, source: str = "recipe",
                     input_shape: tuple[int, int, int] | None = None) -> ModelSummary:
    """The recipe's model on images of ``input_shape`` (default: the dataset's originals)."""
    dataset = recipe.data.dataset
    originals, num_classes = dataset_shape(dataset, source)
    input_shape = input_shape or originals
    with torch.device("meta"):
        model = build_model(recipe.model, input_shape, num_classes)
    return ModelSummary(recipe.name, dataset, input_shape, num_classes, summarize_model(model, input_shape))


def summarize(text: str | Path) -> ModelSummary:
    path = find_recipe(text)
    return summarize_recipe(load_recipe(path), str(path))


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def render(summary: ModelSummary, console) -> None:
    from rich.table import Table

    table = Table(title=f"{summary.recipe}: {summary.dataset} {_shape(summary.input_shape)} -> "
                        f"{summary.num_classes} classes; counts per image", title_justify="left")
    columns = ("#", "layer", "input", "output", "±1 weights", "32-bit values", "bits BNN", "bits float32",
               "binary MACs", "real-input MACs")
    for name in columns:
        table.add_column(name, justify="left" if name in ("layer", "input", "output") else "right", no_wrap=True)
    for layer in summary.layers:
        table.add_row(str(layer.index), layer.kind, "±1" if layer.binary_input else "real",
                      _shape(layer.output_shape), f"{layer.binary_weights:,}",
                      f"{layer.values - layer.binary_weights:,}", f"{layer.bnn_bits:,}", f"{layer.float_bits:,}",
                      f"{layer.binary_macs:,}", f"{layer.real_macs:,}")
    table.add_section()
    binary_weights = summary.total("binary_weights")
    table.add_row("", "total", "", "", f"{binary_weights:,}", f"{summary.total('values') - binary_weights:,}",
                  f"{summary.total('bnn_bits'):,}", f"{summary.total('float_bits'):,}",
                  f"{summary.total('binary_macs'):,}", f"{summary.total('real_macs'):,}")
    if not console.is_terminal:
        # A pipe or a file gets the whole table rather than an 80-column squeeze of its numbers.
        from rich.console import Console
        console = Console(file=console.file, width=max(console.width, 150), highlight=False)
    console.print(table)
    bnn, flt = summary.total("bnn_bits"), summary.total("float_bits")
    macs, binary_macs = summary.total("macs"), summary.total("binary_macs")
    console.print(
        f"stored values: {bnn / 8 / 2**20:,.2f} MiB binarized vs {flt / 8 / 2**20:,.2f} MiB float32 "
        f"({flt / bnn:.1f}x smaller); {macs:,} MACs per image, {binary_macs:,} of them "
        f"({100 * binary_macs / macs:.1f}%) XNOR-popcount bit operations in the BNN, all of them float "
        f"MACs in the float32 network.", highlight=False)
