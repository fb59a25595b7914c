"""A raw recipe (parsed YAML) checked and resolved into a ``Recipe``.

Every value is checked against its ``Field``; then the checks across fields (``check_consistency``:
a model the data can feed, a schedule with what it needs, fast switches that go together) and
the model's size against this machine's memory (``check_fits_memory``). A recipe that passes
them builds a model that fits this machine's memory and trains without a traceback. The checks
that depend on the device or the number of processes are made where those are known (the
training step's builder).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..data import DATASET_CLASSES, DATASET_IMAGE_SHAPES, available_memory, physical_memory, wants_npz
from ..errors import EnvironmentFailure, suggestion
from .fields import REQUIRED, RecipeError, checked_value, clipped, excerpt
from .schema import DataConfig, ModelConfig, Recipe, Section, closest_key


def build_section(cls: type[Section], node: Any, where: str, source: str) -> Section:
    """``node`` (a mapping from the YAML) as a ``cls``: unknown keys refused, defaults filled in, values checked."""
    if not isinstance(node, dict):
        raise RecipeError(f"{source}: '{where or 'the recipe'}' must be a mapping of keys to values.")
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(node) - set(fields), key=str)
    if unknown:
        key = clipped(f"{where}.{unknown[0]}" if where else str(unknown[0]))
        allowed = f" (allowed here: {', '.join(sorted(fields))})."
        raise RecipeError(f"{source}: unknown key '{key}'{suggestion(closest_key(key), allowed)}")
    sections = getattr(cls, "SECTIONS", {})
    values: dict[str, Any] = {}
    for name, item in fields.items():
        key = f"{where}.{name}" if where else name
        if name in sections:
            values[name] = build_section(sections[name], node.get(name, {}), key, source)
            continue
        spec = item.metadata["field"]
        if name in node:
            values[name] = checked_value(spec, key, node[name], source)
        elif spec.default is REQUIRED:
            raise RecipeError(f"{source}: missing required key '{key}'.")
    return cls(**values)


def check_consistency(r: Recipe, source: str) -> None:
    """The checks across fields that hold on any device."""
    m, s, d, fast = r.model, r.schedule, r.data, r.fast
    if m.arch == "mlp" and not m.hidden:
        raise RecipeError(f"{source}: 'model.hidden' must list the MLP's hidden widths.")
    if m.arch == "convnet" and not [c for c in m.conv if c != "M"]:
        raise RecipeError(f"{source}: 'model.conv' must list the ConvNet's channel widths.")
    bad = [c for c in m.conv if isinstance(c, str) and c != "M"]
    if bad:
        raise RecipeError(f"{source}: 'model.conv' entries must be widths or 'M', got {excerpt(bad[0])}.")
    for before, entry in zip([None, *m.conv], m.conv):
        if entry == "M" and (before is None or before == "M"):
            raise RecipeError(f"{source}: every 'M' in 'model.conv' must follow a channel width (it max-pools that "
                              f"convolution's output), got {excerpt(list(m.conv))}.")
    if m.arch == "convnet" and not wants_npz(d):
        channels, height, width = DATASET_IMAGE_SHAPES.get(d.dataset, (1, 1 << 30, 1 << 30))
        pools = m.conv.count("M")
        if height >> pools < 1 or width >> pools < 1:
            raise RecipeError(f"{source}: the {pools} max-pools of 'model.conv' halve {d.dataset}'s "
                              f"{height}x{width} images to nothing; use at most "
                              f"{min(height, width).bit_length() - 1}.")
    if s.kind == "exponential" and s.lr_final is None:
        raise RecipeError(f"{source}: 'schedule.lr_final' is required for an exponential schedule.")
    if s.kind == "step" and s.step_epochs is None:
        raise RecipeError(f"{source}: 'schedule.step_epochs' is required for a step schedule.")
    if d.source == "npz" and not d.npz:
        raise RecipeError(f"{source}: 'data.npz' must name a file when 'data.source' is npz.")
    batch = r.train.batch_size
    for key in ("limit_train", "train_size"):  # the authors' loops drop a partial batch: none would be left
        images = getattr(d, key)
        if images is not None and images < batch:
            raise RecipeError(f"{source}: 'train.batch_size' ({batch}) is larger than the {images} training images "
                              f"'data.{key}' leaves; lower the batch or raise data.{key}.")
    if fast.int8_forward and not fast.fused_step:
        raise RecipeError(f"{source}: fast.int8_forward multiplies with the signs fast.fused_step keeps; set "
                          f"fast.fused_step=true too.")
    if fast.fused_step and fast.compile:
        raise RecipeError(f"{source}: fast.fused_step and fast.compile exclude each other; choose one.")


# Bytes per parameter while training: float32 weights, their gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16
# Bytes per parameter to evaluate or export a model file: the file's float32 tensors and the model built from them.
MODEL_FILE_BYTES_PER_PARAMETER = 8
# Bytes per value of a layer's output while training: autograd keeps about four float32 tensors of
# that size per layer (the product, its normalization, the binarized activation and a gradient).
TRAINING_BYTES_PER_ACTIVATION = 16
MAX_PARAMETERS = 2**31  # where the machine's memory is unknown


def _layers(model: ModelConfig, input_shape: tuple[int, int, int], num_classes: int):
    """(parameters, output values per image) of each layer of the recipe's model, as ``core.models`` builds it.

    Weights and biases of every layer and a scale and shift per normalized feature; the max-pools
    halve the image where they stand. Nothing for an architecture not known here.
    """
    bias = 1 if model.bias else 0
    channels, height, width = input_shape
    if model.arch == "mlp":
        widths = [channels * height * width, *model.hidden]
    elif model.arch == "convnet":
        k, spec = model.kernel_size, list(model.conv)
        for i, entry in enumerate(spec):
            if entry == "M":
                continue
            yield channels * entry * k * k + bias * entry + 2 * entry, entry * height * width
            channels = entry
            if i + 1 < len(spec) and spec[i + 1] == "M":
                height, width = height // 2, width // 2
        widths = [channels * height * width, *model.fc]
    else:
        return
    for fan_in, fan_out in zip(widths, [*widths[1:], num_classes]):
        yield fan_in * fan_out + bias * fan_out + 2 * fan_out, fan_out


def estimate_parameters(model: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> int | None:
    """Parameters of the recipe's model, counted from its widths (None for an architecture not known here)."""
    if model.arch not in ("mlp", "convnet"):
        return None
    return sum(parameters for parameters, _ in _layers(model, input_shape, num_classes))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.0f} MiB"


def memory_needed(recipe: Recipe, input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
                  training: bool = True) -> tuple[int, int, str] | None:
    """(parameters, bytes, what the bytes hold) to train the recipe's model, or to evaluate a model file of it.

    Training holds the parameters' state (``TRAINING_BYTES_PER_PARAMETER``) and the activations of
    a batch: every layer's output for ``train.batch_size`` images, or the largest two for
    ``train.eval_batch_size`` images at evaluation, whichever is more. The shape defaults to the
    dataset's original images (a staged .npz of other images changes the first layer only).
    None where the architecture or dataset is not known here.
    """
    d, m, t = recipe.data, recipe.model, recipe.train
    input_shape = input_shape or DATASET_IMAGE_SHAPES.get(d.dataset)
    num_classes = num_classes or DATASET_CLASSES.get(d.dataset, 10)
    count = estimate_parameters(m, input_shape, num_classes) if input_shape else None
    if count is None:
        return None
    if not training:
        return count, count * MODEL_FILE_BYTES_PER_PARAMETER, "float32 weights as stored and as built"
    outputs = [values for _, values in _layers(m, input_shape, num_classes)]
    activations = max(t.batch_size * sum(outputs) * TRAINING_BYTES_PER_ACTIVATION,
                      t.eval_batch_size * 2 * 4 * max(outputs, default=0))
    state = count * TRAINING_BYTES_PER_PARAMETER
    return count, state + activations, (f"float32 weights, gradients and Adam state {_size(state)}, activations "
                                        f"of a batch {_size(activations)}")


def _smaller(recipe: Recipe, training: bool) -> str:
    if not training:  # a model file's model is what it is
        return "it needs a machine with more memory"
    keys = "'model.hidden'" if recipe.model.arch == "mlp" else "'model.conv' and 'model.fc'"
    return f"use smaller widths in {keys} or smaller 'train.batch_size' and 'train.eval_batch_size'"


def check_fits_memory(recipe: Recipe, source: str, memory: int | None = None,
                      input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
                      training: bool = True) -> None:
    """Refuse a model whose training (or, not ``training``, its model file's) memory exceeds this machine's.

    ``memory_needed`` says what is counted; the sentence names the bytes needed and the machine's.
    """
    needed = memory_needed(recipe, input_shape, num_classes, training)
    if needed is None:
        return
    count, need, what = needed
    memory = physical_memory() if memory is None else memory
    doing = "training the model" if training else "the model"
    if memory is not None and need > memory:
        raise RecipeError(f"{source}: {doing} needs about {_size(need)} of memory for its {count:,} parameters "
                          f"({what}), more than this machine's {_size(memory)}; {_smaller(recipe, training)}.")
    if memory is None and count > MAX_PARAMETERS:
        raise RecipeError(f"{source}: the model has about {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                          f"bnnctl trains; {_smaller(recipe, training)}.")


def check_memory_available(recipe: Recipe, source: str, input_shape: tuple[int, int, int], num_classes: int,
                           free: int | None = None, where: str = "this machine") -> None:
    """Before a run allocates its model: refuse (EnvironmentFailure) when the memory free now cannot hold it.

    A model that fits the machine (``check_fits_memory``) may still not fit beside what else runs.
    ``free`` is what ``where`` has free (default: this machine's available memory).
    """
    needed, free = memory_needed(recipe, input_shape, num_classes), available_memory() if free is None else free
    if needed is None or free is None or needed[1] <= free:
        return
    count, need, what = needed
    raise EnvironmentFailure(f"{source}: training the model needs about {_size(need)} of memory for its {count:,} "
                             f"parameters ({what}), more than the {_size(free)} {where} has free now; wait for "
                             f"other work to end, or {_smaller(recipe, True)}.")


def resolve(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """A raw recipe (a mapping, as YAML or a checkpoint holds it) checked and resolved; every field set."""
    recipe = build_section(Recipe, raw, "", source)
    check_consistency(recipe, source)
    return recipe


def resolve_data(raw: dict[str, Any], source: str) -> DataConfig:
    """A recorded ``data`` section alone (an export file keeps its run's), checked and resolved."""
    return build_section(DataConfig, raw, "data", source)
