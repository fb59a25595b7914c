"""The packed engine's variants: one table of the ways an exported model can run, and the rule that picks one.

A variant is a row of ``ENGINE_VARIANTS``: its name, a short description (``bnnctl eval --help`` lists them),
how it runs (the engine's first layer, its hidden layers and its XNOR kernel, or a builder of its own), the
devices it runs on, which models it can run (``refusal``) and whether it computes exactly what the float
model does. ``bnnctl eval --engine xnor --variant NAME``, the engine (``engine.make_engine``) and the model
benches (``bench --model``, whose engine rows are these) all read this one table; a new way of running the
engine is one more row. The module imports no torch, so the command line lists the table without loading it.

The default, ``default_variant``, is the fastest exact variant for the batch at hand by a fixed rule (no
timing is taken at run time); ``DEFAULT_RULE`` says it in words, and each branch rests on recorded timings:

* A model trained on inputs other than 8-bit images scaled as 2x/255 - 1 runs ``xnor`` (the float first
  layer), the only exact first layer for real-valued inputs; on a CPU below ``LARGE_BATCH`` images per call,
  ``plan``, the same first layer in the native plan.
* On a GPU: ``xnor-integer`` (H200, MNIST MLP, 10,000 images per call: 4.96 ms against 7.69 for the bit
  planes and 11.4 for the float first layer, ``results/bench/20261127T134744-nvidia-h200-mnist-mlp.json``).
  The int8 first layer is never the GPU default: torch's CUDA int8 matmul wants more than 16 rows per call.
* On a CPU, batches of at least ``LARGE_BATCH`` images: ``xnor-int8`` where torch's int8 matmul has a
  fast kernel (AVX512-VNNI or AMX: on a Zen 4, 10,000 images in 292 ms against 589 for the integer and 618
  for the bit-plane first layer, ``results/bench/20261130T215255-cpu-mnist-mlp.json``), else
  ``xnor-integer``: without VNNI torch's ``_int_mm`` is a plain loop (on an AVX2 Zen 3, 1,000 rows of
  784 x 4096 took 21 s where the fp32 matmul takes tens of ms), and the integer first layer beat the bit
  planes there (3.8 s against 5.5 s, ``results/bench/20261127T132144-cpu-mnist-mlp.json``).
* On a CPU, smaller batches: the native plan (``plan-bitplane`` for 8-bit models, else ``plan``), the whole
  network in one native call with few-row XNOR kernels that threshold and pack the next layer's input in
  their output, and its first layer from nibble tables (exact integers, no bit planes). On the AVX2 Zen 3, idle,
  one image per call (``results/bench/20261207T12{4024,4848,5059}-cpu-*-latency.json``): the MNIST MLP
  784-4096x3-10 in 0.24 ms against 1.43 for the per-layer loop (``xnor-bitplane``) at one thread, 0.18 against
  1.14 at two; the CIFAR-10 ConvNet in 3.1 ms against 4.6 for ``xnor-integer`` (one fp32 convolution first) at
  one thread, 2.4 against 3.5 at two; SVHN 1.2 against 2.0 and 0.75 against 1.56; at 15 images per call
  (``20261207T123802``), CIFAR-10 37 against 63 ms and 21 against 24. Where the plan cannot run (a GPU, or the
  engine built with another kernel), ``xnor-bitplane``: a few rows of 784 pixels are too little work for a GEMM
  library to amortise its call (and for an int8 one without VNNI, a plain loop per row); eight bit-plane rows
  on the XNOR kernel read the first layer's weights as 1 bit each. On the AVX2 Zen 3, one thread, a loaded machine (``bnnctl bench --model
  mnist-mlp --batch 1``): 1.8 ms median against 3.9 for the integer, 9.8 for the float and 26 for the int8 first
  layer; the bit planes stayed ahead up to 64 images per call. To be confirmed on AVX-512: the latency records
  name the rule's choice beside the fastest.

Where the preferred variant cannot run the model (the integer first layer past 2^24 / 510 inputs per unit, the
int8 one on a convolution that changes the image size), the next in ``_preferences`` that can is taken, ending
with ``xnor``, which runs every model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError

EIGHT_BIT_SCALED = "uint8_scale"  # exported.UINT8_SCALE, spelled here so that this table needs no torch
LARGE_BATCH = 16  # on a CPU, from this many images per call the first layer is a GEMM worth a library's call
FLOAT32_EXACT = 2 ** 24  # float32 sums integers exactly below this
INPUT_LEVELS = 255  # exported.INPUT_LEVELS


def _eight_bit(exported: Any) -> str | None:
    if exported.input_encoding != EIGHT_BIT_SCALED:
        preprocess = (exported.data or {}).get("preprocess", "other") if isinstance(exported.data, dict) else "other"
        return (f"it needs a model trained on 8-bit images scaled as 2x/255 - 1, and this one was trained on "
                f"inputs preprocessed as {preprocess!r}")
    return None


def _integer_fits(exported: Any) -> str | None:
    fan_in = exported.layers[0].fan_in
    if 2 * INPUT_LEVELS * fan_in >= FLOAT32_EXACT:
        return (f"its first layer is exact in float32 up to {FLOAT32_EXACT // (2 * INPUT_LEVELS)} inputs per unit, "
                f"and this model's has {fan_in}")
    return None


def _int8_fits(exported: Any) -> str | None:
    first = exported.layers[0]
    if first.kind == "conv" and 2 * first.padding != first.kernel_size - 1:
        return (f"it runs first convolutions that keep the image's size, and this one has kernel "
                f"{first.kernel_size}, padding {first.padding}")
    return None


def _float_fits(exported: Any) -> str | None:
    widest = max(layer.fan_in for layer in exported.layers)
    if widest >= FLOAT32_EXACT:
        return f"the float kernel sums exactly below {FLOAT32_EXACT} products per unit, and this model has {widest}"
    return None


@dataclass(frozen=True)
class EngineVariant:
    """One way the packed engine runs an exported model."""

    description: str
    first_layer: str  # engine.FIRST_LAYERS: float | bitplane | integer | int8
    hidden: str = "xnor"  # the hidden layers: xnor (packed bits) | float (the baseline kernel on +/-1 floats)
    xnor_impl: str = "tuned"  # kernels.xnor_gemm(impl=...)
    devices: tuple[str, ...] = ("cpu", "cuda")
    exact: bool = True  # computes what the fp32 float model does: same predictions (the benches check it)
    models: str = "every exported model"  # in words, for the help and the tables
    # (exported model) -> why this variant cannot run it, or None; checks beside the device
    fits: tuple[Callable[[Any], str | None], ...] = ()
    builder: str = "packed"  # engine.BUILDERS key: which engine class runs it

    def refusal(self, exported: Any, device_type: str) -> str | None:
        """Why this variant cannot run the exported model on the device (a phrase), or None."""
        if device_type not in self.devices:
            return f"it runs on {' or '.join(self.devices)} only, not on {device_type}"
        for check in self.fits:
            why = check(exported)
            if why:
                return why
        return None


ALL_MODELS = EngineVariant.models
_EIGHT_BIT_MODELS = "8-bit scaled models only"
CUDA_ONLY = ("cuda",)

ENGINE_VARIANTS: dict[str, EngineVariant] = {
    "xnor-int8": EngineVariant("XNOR kernels; first layer: exact integers on torch's int8 matmul (pixels less 128)",
                               "int8", models=_EIGHT_BIT_MODELS, fits=(_eight_bit, _int8_fits)),
    "xnor-integer": EngineVariant("XNOR kernels; first layer: exact integers on torch's fp32 matmul", "integer",
                                  models=_EIGHT_BIT_MODELS, fits=(_eight_bit, _integer_fits)),
    "xnor-bitplane": EngineVariant("XNOR kernels; first layer on the 8 bit planes (the paper's Algorithm 5)",
                                   "bitplane", models=_EIGHT_BIT_MODELS, fits=(_eight_bit,)),
    "xnor": EngineVariant("XNOR kernels; first layer on the float baseline kernel (the paper's setup)", "float"),
    "plan-bitplane": EngineVariant("the whole network in one native call (few-row XNOR kernels, threshold and "
                                   "packing in their output); first layer on the 8 bit planes", "bitplane",
                                   devices=("cpu",), models=_EIGHT_BIT_MODELS, fits=(_eight_bit,), builder="plan"),
    "plan": EngineVariant("the whole network in one native call; first layer on the float baseline kernel", "float",
                          devices=("cpu",), builder="plan"),
    "baseline": EngineVariant("every layer on the float baseline kernel, +/-1 floats (the paper's reference)",
                              "float", hidden="float", fits=(_float_fits,)),
    "xnor-paper": EngineVariant("as xnor, XNOR on the paper-style 16x16 tiled kernel", "float", xnor_impl="paper",
                                devices=CUDA_ONLY),
    "xnor-bitplane-csa": EngineVariant("as xnor-bitplane, XNOR on the carry-save popcount kernel", "bitplane",
                                       xnor_impl="csa", devices=CUDA_ONLY, models=_EIGHT_BIT_MODELS,
                                       fits=(_eight_bit,)),
    "xnor-bitplane-tc": EngineVariant("as xnor-bitplane, XNOR on the tensor-core kernel", "bitplane",
                                      xnor_impl="tc", devices=CUDA_ONLY, models=_EIGHT_BIT_MODELS,
                                      fits=(_eight_bit,)),
}
AUTO = "auto"

DEFAULT_RULE = (f"the fastest exact variant for the batch: xnor for a model not trained on 8-bit images scaled to "
                f"[-1, 1] (plan on a CPU below {LARGE_BATCH} images per call); on a GPU xnor-integer; on a CPU "
                f"below {LARGE_BATCH} images per call plan-bitplane, "
                f"from {LARGE_BATCH} xnor-int8 where torch's int8 matmul has VNNI or AMX, else xnor-integer")


def _preferences(device_type: str, batch: int, fast_int8: bool) -> tuple[str, ...]:
    """The variants the rule prefers, best first (see the module's docstring); xnor last, as it runs everything."""
    if device_type != "cpu":
        return "xnor-integer", "xnor-bitplane", "xnor"
    if batch < LARGE_BATCH:
        return "plan-bitplane", "plan", "xnor-bitplane", "xnor-integer", "xnor"
    return ("xnor-int8", "xnor-integer", "xnor-bitplane", "xnor") if fast_int8 else \
        ("xnor-integer", "xnor-bitplane", "xnor")


def default_variant(exported: Any, device_type: str, batch: int, fast_int8: bool,
                    among: Callable[[str], bool] = lambda name: True) -> str:
    """The variant the rule picks for ``batch`` images per call of this model on this device type.

    ``fast_int8``: whether torch's int8 matmul has a fast kernel on this CPU (``engine.torch_int8_is_fast``);
    ``among``: the variants a caller can build (``PackedEngine`` chooses among its own first layers)."""
    for name in _preferences(device_type, batch, fast_int8):
        if among(name) and ENGINE_VARIANTS[name].refusal(exported, device_type) is None:
            return name
    return "xnor"


def check_variant(name: str, exported: Any, device_type: str) -> EngineVariant:
    """The named row, or a VariantRefused naming why it cannot run this model here."""
    if name not in ENGINE_VARIANTS:
        raise VariantRefused(f"unknown engine variant {name!r}; choose {AUTO} or one of {', '.join(ENGINE_VARIANTS)}.")
    why = ENGINE_VARIANTS[name].refusal(exported, device_type)
    if why:
        raise VariantRefused(f"the engine variant {name} cannot run this model: {why}.")
    return ENGINE_VARIANTS[name]


def help_text() -> str:
    """The variants, one line each, for ``--help``."""
    def notes(v: EngineVariant) -> str:
        where = [] if v.devices == ("cpu", "cuda") else [f"{' or '.join(d.upper() for d in v.devices)} only"]
        notes = where + ([] if v.models == ALL_MODELS else [v.models])
        return f" ({'; '.join(notes)})" if notes else ""

    rows = [f"{AUTO} (the default): {DEFAULT_RULE}"]
    return "; ".join(rows + [f"{name}: {v.description}{notes(v)}" for name, v in ENGINE_VARIANTS.items()]) + "."


class VariantRefused(UserError):
    """An engine variant that does not exist, or cannot run the model asked of it."""


__all__ = ["AUTO", "DEFAULT_RULE", "ENGINE_VARIANTS", "EngineVariant", "LARGE_BATCH", "VariantRefused",
           "check_variant", "default_variant", "help_text"]
