"""The native plan (a whole exported network in one native call) and its few-row XNOR kernels, held to the
per-layer engine bit for bit, and its .bnnx reader held to the Python reader check for check.

Every CPU test runs on each instruction set this CPU has (the isa fixture of tests/conftest.py forces each; AVX-512
skips on a CPU without it), at every batch size from 1 to 9 (1 to 8 run the few-row kernels, 9 the
many-row GEMM) and one larger, on MLPs (8-bit inputs with the bit-plane first layer, float inputs with the float
one) and ConvNets of both kinds, with layer sizes on and off the kernels' panel and word edges.
"""
from __future__ import annotations

import gc
import hashlib
import json
import struct

import pytest
import torch

from bnnctl import kernels
from bnnctl.core.models import build_model
from bnnctl.infer.bnnx import DamagedExport, MAGIC, export_bytes, read_export
from bnnctl.infer.engine import EngineError, PackedEngine
from bnnctl.data import scale_to_pm1
from bnnctl.data.preprocessing import Standardize, pixel_table
from bnnctl.infer.bnnx import EXPORT_VERSION
from bnnctl.infer.exported import ExportedPreprocessing, ExportError
from bnnctl.infer.fold import export_model
from bnnctl.infer.native_engine import NativePlan, native_plan_handle
from bnnctl.recipe import load_recipe
from bnnctl.runs import FORMAT_VERSION, MODEL_FORMAT
from tests.test_export_engine import REPO, images, perturb_norms, prepared, quantize_conv_biases
from tests.test_kernels import expected_product, signed_inputs

# Models with layer widths off the panel (4, 8, 32 columns) and word (64) edges, odd input sizes (63 inputs: a
# ragged last word), convolutions with and without a max-pool after them (the comparison flipped after the max, or
# the weights negated), and a max-pool that drops a ragged edge (5 x 5 pooled by 2).
ODD_ARCHS = {
    "mlp-odd": ("mnist.yaml", ["model.hidden=[100,37]"], (1, 9, 7)),
    "convnet-odd": ("cifar10.yaml", ["model.conv=[5,33,M,70,M]", "model.fc=[65]"], (3, 10, 10)),
    # more inputs than one pass of the nibble-table first layer's 16-bit sums takes (4,096)
    "mlp-long": ("mnist.yaml", ["model.hidden=[37]"], (1, 67, 67)),
}
BATCHES = list(range(1, 10)) + [40]


# The per-pixel preprocessings an odd model's export carries: 2x/255 - 1, and a standardization of made-up statistics.
ODD_PIXEL_TRANSFORMS = {"scale": scale_to_pm1, "standardize": Standardize(0.13, 0.31)}


def odd_model(arch: str, preprocess: str = "scale", carry: bool = True):
    """An untrained model of ODD_ARCHS with perturbed norms (negative, zero and huge BN scales); its export carries
    its per-pixel preprocessing, unless ``carry`` is False (as an export written without its training images)."""
    recipe, overrides, shape = ODD_ARCHS[arch]
    cfg = load_recipe(REPO / "recipes" / recipe, overrides)
    torch.manual_seed(1)
    model = build_model(cfg.model, shape, 10).eval()
    perturb_norms(model, seed=5)
    quantize_conv_biases(model)
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": cfg.to_dict(), "input_shape": list(shape),
              "num_classes": 10}
    record["recipe"]["data"]["preprocess"] = preprocess
    exported = export_model(record, model)
    if carry:
        exported.preprocessing = ExportedPreprocessing(preprocess, {"table": pixel_table(ODD_PIXEL_TRANSFORMS[preprocess])})
    return exported, shape


def float_inputs(n: int, shape, seed: int) -> torch.Tensor:
    """Standardized-looking float inputs, with exact zeros and negative zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    x[torch.rand(n, *shape, generator=g) < 0.05] = 0.0
    x[torch.rand(n, *shape, generator=g) < 0.05] = -0.0
    return x


@pytest.fixture(scope="module")
def models():
    """name -> (export, inputs): the tiny trained models of tests/test_export_engine.py (with units tied exactly
    on their thresholds) and the odd ones, with 8-bit inputs, and float-input (standardized) versions."""
    out = {}
    for arch in ("mlp", "convnet", "mlp-shift-bn"):
        record, model = prepared(arch)
        shape = tuple(record["input_shape"])
        out[arch] = (export_model(record, model), images(max(BATCHES), shape, 4))
        record["recipe"]["data"]["preprocess"] = "standardize"
        out[f"{arch}-float"] = (export_model(record, model), float_inputs(max(BATCHES), shape, 4))
    for arch in ODD_ARCHS:
        exported, shape = odd_model(arch)
        out[arch] = (exported, images(max(BATCHES), shape, 6))
        exported, shape = odd_model(arch, "standardize")
        out[f"{arch}-float"] = (exported, float_inputs(max(BATCHES), shape, 6))
    return out


# ---------------------------------------------------------------------------- the few-row kernels

# (n, k): outputs around the panel widths (4, 8, 32) and the 64-bit words; k around the words and past the AVX2
# kernel's Harley-Seal threshold (1024) and byte-counter flush (31 blocks of 16 half-words).
FEW_ROW_SHAPES = [(1, 1), (7, 63), (33, 64), (64, 65), (100, 200), (130, 1100), (65, 4096), (9, 20000)]


@pytest.mark.parametrize("rows", range(1, kernels.MAX_FEW_ROWS + 1))
def test_few_rows_products_equal_the_gemm(isa, rows):
    for n, k in FEW_ROW_SHAPES:
        a, b = signed_inputs(rows, k, seed=rows * 100 + k), signed_inputs(n, k, seed=n + k)
        pa, pb = kernels.pack(a), kernels.pack(b)
        expected = expected_product(a, b)
        for words_per_call in (1, 3):
            assert torch.equal(kernels.xnor_few_rows(pa, pb, k, words_per_call=words_per_call), expected), (n, k)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
def test_few_rows_threshold_packs_the_next_layers_bits(isa, rows):
    g = torch.Generator().manual_seed(rows)
    for n, k in FEW_ROW_SHAPES:
        a, b = signed_inputs(rows, k, seed=rows + k), signed_inputs(n, k, seed=2 * n + k)
        pa, pb = kernels.pack(a), kernels.pack(b)
        products = expected_product(a, b)
        # bounds on and around the products, and the never/always ends
        bound = products[0] + torch.randint(-1, 2, (n,), generator=g, dtype=torch.int32)
        bound[::7] = k + 1
        bound[1::7] = -k
        bits = kernels.xnor_few_rows(pa, pb, k, bound=bound, words_per_call=2)
        assert torch.equal(bits, kernels.pack_ge(products, bound)), (n, k)


@pytest.mark.parametrize("rows", [1, 4, 8])
def test_few_rows_planes_sum_each_row_times_its_power_of_two(isa, rows):
    for n, k in FEW_ROW_SHAPES[:6]:
        a, b = signed_inputs(rows, k, seed=3 * rows + k), signed_inputs(n, k, seed=n * k)
        pa, pb = kernels.pack(a), kernels.pack(b)
        weights = torch.tensor([1 << r for r in range(rows)], dtype=torch.int64)
        total = (expected_product(a, b).long() * weights[:, None]).sum(0, keepdim=True).to(torch.int32)
        assert torch.equal(kernels.xnor_few_rows(pa, pb, k, planes=True), total), (n, k)
        bound = total[0] + 1 - 2 * (torch.arange(n, dtype=torch.int32) % 2)
        assert torch.equal(kernels.xnor_few_rows(pa, pb, k, bound=bound, planes=True), kernels.pack_ge(total, bound))


def test_few_rows_refuses_what_it_cannot_take():
    p = kernels.pack(torch.randn(9, 64))
    with pytest.raises(kernels.KernelError, match="1 to 8 rows"):
        kernels.xnor_few_rows(p, p, 64)
    with pytest.raises(kernels.KernelError, match="bound as 9 int32"):
        kernels.xnor_few_rows(p[:2], p, 64, bound=torch.zeros(3, dtype=torch.int32))


# ---------------------------------------------------------------------------- the plan against the engine

def as_given(x: torch.Tensor) -> torch.Tensor:
    """The transform of inputs that are already the float model's inputs (the engines refuse to guess a
    preprocessing fitted on training images, such as standardize)."""
    return x.float()


def assert_same_outputs(engine: PackedEngine, plan: NativePlan, x: torch.Tensor, what: str) -> None:
    transform = None if x.dtype == torch.uint8 else as_given
    expected = list(engine._outputs(x, transform))
    got = plan.outputs(x, transform)
    assert len(got) == len(expected), what
    for i, (e, g) in enumerate(zip(expected, got)):
        assert g.dtype == e.dtype and g.shape == e.shape, f"{what}, layer {i + 1}: {g.shape} vs {e.shape}"
        assert torch.equal(g, e), f"{what}, layer {i + 1}: {(g != e).sum().item()} values differ"
    assert torch.equal(plan.logits(x, transform), expected[-1]), what


@pytest.mark.parametrize("name", ["mlp", "convnet", "mlp-shift-bn", "mlp-odd", "convnet-odd", "mlp-long"])
@pytest.mark.parametrize("first_layer", ["bitplane", "float"])
def test_plan_equals_the_engine_on_8_bit_models(isa, models, name, first_layer):
    """Every layer's packed activations and the logits, for every batch size: the bit-plane first layer (the
    integers of the engine's bitplane, integer and int8 modes) and the float one on 2x/255 - 1."""
    exported, x = models[name]
    engine = PackedEngine(exported, first_layer=first_layer)
    plan = NativePlan(exported, first_layer)
    assert (plan.isa, plan.first_layer) == (isa, first_layer)
    for n in BATCHES:
        assert_same_outputs(engine, plan, x[:n], f"{name}, {first_layer} first layer, {n} images")


@pytest.mark.parametrize("name", ["mlp-float", "convnet-float", "mlp-odd-float", "convnet-odd-float"])
def test_plan_equals_the_engine_on_float_input_models(isa, models, name):
    """Torch7-style models (standardized float inputs): the float first layer, the same float32 sums to the bit."""
    exported, x = models[name]
    engine, plan = PackedEngine(exported), NativePlan(exported)
    assert plan.first_layer == "float"
    for n in BATCHES:
        assert_same_outputs(engine, plan, x[:n], f"{name}, {n} inputs")


def test_a_float_first_layer_maps_pixels_natively_through_its_exports_table(models):
    """A float-input model whose export carries its per-pixel preprocessing takes uint8 pixels in the plan, mapped by
    the native op through the same table: the logits the Python transform and the engine's own layers give."""
    exported, _ = models["mlp-odd-float"]
    x = images(9, ODD_ARCHS["mlp-odd"][2], 3)
    plan = NativePlan(exported)
    assert plan._native_pixels and kernels.plan_takes_pixels(plan._handle)
    expected = PackedEngine(exported, first_layer="float").logits(x)
    assert torch.equal(plan.logits(x), expected)
    assert torch.equal(plan.logits(x, exported.preprocessing.transform), expected)
    assert torch.equal(kernels.plan_logits(plan._handle, x.reshape(9, -1).contiguous()), expected)
    assert torch.equal(PackedEngine(exported).logits(x[:1]), expected[:1])  # the default: the plan, on pixels
    bitplane = NativePlan(models["mlp-odd"][0], "float")  # 8-bit: its own transform is 2x/255 - 1, in Python
    assert not bitplane._native_pixels


def test_plan_keeps_nan_and_infinite_inputs_as_the_engine_does(models):
    """NaN fails every threshold and survives the max-pool (torch's amax keeps it); infinities compare as numbers."""
    for name in ("convnet-odd-float", "mlp-float"):
        exported, x = models[name]
        x = x[:6].clone()
        x.view(-1)[::17] = float("nan")
        x.view(-1)[5::23] = float("inf")
        x.view(-1)[7::29] = float("-inf")
        assert_same_outputs(PackedEngine(exported), NativePlan(exported), x, name)


def test_plan_variant_of_the_engine(models):
    exported, x = models["convnet"]
    plan = PackedEngine(exported, variant="plan")
    layers = PackedEngine(exported)
    assert plan.plan is not None and plan.plan.first_layer == "bitplane"
    assert torch.equal(plan.logits(x), layers.logits(x))
    assert torch.equal(plan.predict(x, batch_size=7), layers.predict(x))
    for got, expected in zip(plan.trace(x[:3]), layers.trace(x[:3])):
        assert torch.equal(got, expected)


def test_plan_refuses_what_it_cannot_run(models):
    exported, x = models["mlp"]
    for kwargs, match in [({"first_layer": "int8"}, "bitplane or float first layer"),
                          ({"hidden": "float"}, "XNOR hidden layers"),
                          ({"variant": "fast"}, "variant must be one of layers, plan")]:
        with pytest.raises(EngineError, match=match):
            PackedEngine(exported, **{"variant": "plan", **kwargs})
    with pytest.raises(EngineError, match="bitplane first layer needs a model trained on 8-bit images"):
        NativePlan(models["mlp-float"][0], "bitplane")
    plan = NativePlan(exported)
    with pytest.raises(EngineError, match="takes 8-bit images, got float32"):
        plan.logits(x.float())
    with pytest.raises(EngineError, match="inputs of 64 values each"):
        plan.logits(x[:, :, :4])


def test_plans_are_released_with_their_owner(models):
    exported, x = models["mlp"]
    plan = NativePlan(exported)
    handle = plan._handle
    assert kernels.plan_info(handle)[0] == kernels.cpu_isa()
    del plan
    gc.collect()
    with pytest.raises(RuntimeError, match="no native plan"):
        kernels.plan_logits(handle, x)


# ---------------------------------------------------------------------------- the native reader

def parts(data: bytes) -> tuple[dict, bytes]:
    """(header, data section) of a version 2 or 3 export file."""
    header_len = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[48:48 + header_len]), data[48 + header_len:]


def file_of(text: bytes, body: bytes, version: int = EXPORT_VERSION, header_len: int | None = None) -> bytes:
    """An export file of this header text and data section, with a right checksum (from version 2)."""
    if version == 1:
        return MAGIC + struct.pack("<II", 1, len(text)) + text + body
    text += b" " * (-(48 + len(text)) % 64)
    fixed = MAGIC + struct.pack("<II", version, len(text) if header_len is None else header_len)
    return fixed + hashlib.sha256(fixed + text + body).digest() + text + body


def rebuilt(data: bytes, change=None, header=None, body=None) -> bytes:
    """data with its header changed in place by change(header), or replaced, or its data section replaced, and its
    checksum made right again: the damage a checksum cannot see."""
    original, original_body = parts(data)
    if header is None:
        header = original
        if change is not None:
            change(header)
    return file_of(json.dumps(header).encode(), original_body if body is None else body)


def entry(h: dict, layer: int, name: str) -> dict:
    return h["layers"][layer]["tensors"][name]


def _layers_end(h: dict) -> int:
    """Where the layers' tensors end in the data section (a version 2 file ends there)."""
    last = entry(h, len(h["layers"]) - 1, "shift")
    return last["offset"] + last["nbytes"] + (-last["nbytes"] % 64)


def body_with(data: bytes, offset: int, value: bytes) -> bytes:
    """The data section with value written at offset."""
    body = bytearray(parts(data)[1])
    body[offset:offset + len(value)] = value
    return bytes(body)


def damaged_files(data: bytes) -> dict[str, bytes]:
    """A damaged or foreign version of an export of ODD_ARCHS["mlp-odd"] for each check the reader makes."""
    h, body = parts(data)
    changes = {
        "missing field": lambda h: h.pop("num_classes"),
        "unknown field": lambda h: h.update(extra=1),
        "format": lambda h: h.update(format="other"),
        "version": lambda h: h.update(version=EXPORT_VERSION + 1),
        "input shape": lambda h: h.update(input_shape=[1, 0, 7]),
        "input shape type": lambda h: h.update(input_shape="big"),
        "encoding": lambda h: h.update(input_encoding="rgb"),
        "classes bool": lambda h: h.update(num_classes=True),
        "classes float": lambda h: h.update(num_classes=10.0),
        "info": lambda h: h.update(info=[]),
        "data": lambda h: h.update(data=5),
        "no layers": lambda h: h.update(layers=[]),
        "layer fields": lambda h: h["layers"][0].pop("pool"),
        "kind": lambda h: h["layers"][1].update(kind="pool"),
        "role": lambda h: h["layers"][1].update(role="first"),
        "out features": lambda h: h["layers"][1].update(out_features=0),
        "dense kernel": lambda h: h["layers"][1].update(kernel_size=3),
        "conv in a dense model": lambda h: h["layers"][1].update(kind="conv"),
        "first shape": lambda h: h["layers"][0].update(in_shape=[64]),
        "chain": lambda h: h["layers"][1].update(in_shape=[99]),
        "tensor names": lambda h: h["layers"][1]["tensors"].pop("threshold"),
        "tensors not object": lambda h: h["layers"][1].update(tensors=[]),
        "entry fields": lambda h: entry(h, 0, "weight_bits").pop("nbytes"),
        "dtype": lambda h: entry(h, 0, "weight_bits").update(dtype="int32"),
        "shape": lambda h: entry(h, 1, "weight_bits").update(shape=[37, 3]),
        "nbytes": lambda h: entry(h, 1, "threshold").update(nbytes=1),
        "offset": lambda h: entry(h, 1, "threshold").update(offset=0),
        "classes": lambda h: h.update(num_classes=11),
        "preprocessing not object": lambda h: h.update(preprocessing=[1]),
        "preprocessing fields": lambda h: h["preprocessing"].pop("tensors"),
        "preprocessing kind": lambda h: h["preprocessing"].update(kind="pca"),
        "preprocessing kind type": lambda h: h["preprocessing"].update(kind=5),
        "preprocessing encoding": lambda h: h["preprocessing"].update(kind="standardize"),
        "preprocessing data": lambda h: h["data"].update(preprocess="zca"),
        "preprocessing tensors": lambda h: h["preprocessing"]["tensors"].update(mean=h["preprocessing"]["tensors"]["table"]),
        "preprocessing tensors type": lambda h: h["preprocessing"].update(tensors=[]),
        "preprocessing dtype": lambda h: h["preprocessing"]["tensors"]["table"].update(dtype="float64"),
        "preprocessing shape": lambda h: h["preprocessing"]["tensors"]["table"].update(shape=[255]),
        "preprocessing nbytes": lambda h: h["preprocessing"]["tensors"]["table"].update(nbytes=4),
        "preprocessing offset": lambda h: h["preprocessing"]["tensors"]["table"].update(offset=0),
        "preprocessing entry fields": lambda h: h["preprocessing"]["tensors"]["table"].pop("dtype"),
    }
    files = {name: rebuilt(data, change) for name, change in changes.items()}
    text = json.dumps(h).encode()
    scale, w0 = entry(h, 2, "scale"), entry(h, 0, "weight_bits")
    files.update({
        "not an object": rebuilt(data, header=[1, 2]),
        "json": file_of(b"{" + text[2:], body),
        "header past the end": file_of(text, body, header_len=10 ** 9),
        "not an export": b"hello, world",
        "short signature": MAGIC[:5],
        "cut short": data[:12],
        "cut in the digest": data[:40],
        "other version": MAGIC + struct.pack("<I", EXPORT_VERSION + 1) + data[12:],
        "checksum": data[:-1] + bytes([data[-1] ^ 1]),
        "flipped header bit": data[:60] + bytes([data[60] ^ 4]) + data[61:],
        "data section too long": rebuilt(data, body=body + bytes(64)),
        "data section too short": rebuilt(data, body=body[:-100]),
        "padding": rebuilt(data, body=body_with(data, scale["offset"] + scale["nbytes"] + 3, b"\x01")),
        "bits past fan-in": rebuilt(data, body=body_with(data, w0["offset"] + 7, b"\x80")),
        "direction": rebuilt(data, body=body_with(data, entry(h, 1, "direction")["offset"], b"\x02")),
        "threshold range": rebuilt(data, body=body_with(data, entry(h, 1, "threshold")["offset"],
                                                        struct.pack("<i", 10 ** 6))),
        "float threshold": rebuilt(data, body=body_with(data, entry(h, 0, "float_threshold")["offset"],
                                                        struct.pack("<f", float("nan")))),
        "scale": rebuilt(data, body=body_with(data, scale["offset"], struct.pack("<d", float("inf")))),
        "preprocessing NaN": rebuilt(data, body=body_with(data, h["preprocessing"]["tensors"]["table"]["offset"] + 8,
                                                          struct.pack("<f", float("nan")))),
    })
    return files


@pytest.fixture(scope="module")
def odd_export() -> bytes:
    return export_bytes(odd_model("mlp-odd")[0])


def test_native_reader_refuses_every_damage_as_the_python_reader_does(odd_export):
    """The same error class and the same sentence, check for check."""
    checked = 0
    for name, data in damaged_files(odd_export).items():
        with pytest.raises(ExportError) as python:
            read_export(data, "m.bnnx")
        with pytest.raises(ExportError) as native:
            native_plan_handle(data, "m.bnnx")
        assert type(native.value) is type(python.value), name
        assert str(native.value) == str(python.value), name
        checked += isinstance(python.value, DamagedExport)
    assert checked >= 40


def test_native_reader_accepts_what_the_python_reader_accepts(odd_export):
    """Python's == in the header (2.0 == 2, False == 0), repeated keys (the last wins), version 1 files."""
    x = images(5, ODD_ARCHS["mlp-odd"][2], 1)
    reference = PackedEngine(read_export(odd_export, "m.bnnx")).logits(x)
    h, body = parts(odd_export)
    v1 = dict(h)
    del v1["data"], v1["preprocessing"]
    v2 = dict(h)
    del v2["preprocessing"]
    repeated = json.dumps(h).encode().replace(b'"num_classes": 10', b'"num_classes": 3, "num_classes": 10')
    variants = {
        "float version": rebuilt(odd_export, lambda h: h.update(version=float(EXPORT_VERSION))),
        "version 2": file_of(json.dumps({**v2, "version": 2}).encode(), body[:_layers_end(h)], version=2),
        "bool offset": rebuilt(odd_export, lambda h: entry(h, 0, "weight_bits").update(offset=False)),
        "repeated key": file_of(repeated, body),
        "version 1": file_of(json.dumps({**v1, "version": 1}).encode(), body[:_layers_end(h)], version=1),
    }
    for name, data in variants.items():
        exported = read_export(data, "m.bnnx")
        handle = native_plan_handle(data, "m.bnnx")
        try:
            assert torch.equal(kernels.plan_logits(handle, x.reshape(5, -1).contiguous()), reference), name
        finally:
            kernels.release_plan(handle)
        assert torch.equal(PackedEngine(exported).logits(x), reference), name
