"""The export file (.bnnx): its checksum, the header checked against the data, version 1 files, and the
commands around it (``bnnctl export -o``, ``bnnctl eval model.bnnx``); exact thresholds in the engine.

Every way a file can be damaged -- a flipped byte anywhere, a header that disagrees with its data -- is
one sentence naming the file and exit code 2, never a crash or a model with other numbers.
"""
from __future__ import annotations

import copy

import hashlib
import io
import json
import re
import struct
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from bnnctl import kernels
from bnnctl.cli import app
from bnnctl.core.models import build_model
from bnnctl.errors import DamagedFile, UserError
from bnnctl.infer.engine import EngineError, PackedEngine, _FloatDense, _pack_ge, _pm1_ge
from bnnctl.infer.bnnx import EXPORT_VERSION, MAGIC, DamagedExport, load_export, read_export, save_export
from bnnctl.infer.exported import ExportedLayer, ExportError
from bnnctl.data import scale_to_pm1
from bnnctl.infer.float_model import ThresholdSign, float_model_from_export
from bnnctl.infer.fold import export_model, integer_thresholds
from bnnctl.recipe import dump_recipe, load_recipe
from bnnctl.files import atomic_torch_save
from bnnctl.runs import FORMAT_VERSION, MODEL_FORMAT
from tests.test_export_engine import images, train_tiny

QUIET = Console(file=io.StringIO())


@pytest.fixture(scope="module")
def mlp():
    return train_tiny("mlp", steps=1)


@pytest.fixture
def good(tmp_path, mlp) -> Path:
    record, model = mlp
    path = tmp_path / "good.bnnx"
    save_export(export_model(record, model), path)
    return path


def split_file(data: bytes):
    """(version, header dict, data section) of an export file's bytes."""
    version, length = struct.unpack_from("<II", data, len(MAGIC))
    start = len(MAGIC) + 8 + (32 if version >= 2 else 0)
    return version, json.loads(data[start:start + length]), data[start + length:]


def build_file(header: dict, body: bytes, version: int = EXPORT_VERSION) -> bytes:
    """An export file from a header and a data section, laid out (and checksummed) as save_export does."""
    text = json.dumps(header, indent=1).encode()
    fixed_len = len(MAGIC) + 8 + (32 if version >= 2 else 0)
    text += b" " * (-(fixed_len + len(text)) % 64)
    fixed = MAGIC + struct.pack("<II", version, len(text))
    if version < 2:
        return fixed + text + body
    return fixed + hashlib.sha256(fixed + text + body).digest() + text + body


def layers_end(header: dict) -> int:
    """Where the layers' tensors end in the data section: files before version 3 end there."""
    entries = [e for layer in header["layers"] for e in layer["tensors"].values()]
    return max(e["offset"] + e["nbytes"] + (-e["nbytes"] % 64) for e in entries)


def as_version_1(data: bytes) -> bytes:
    """The same model as a version 1 file: no checksum, no data section in the header."""
    _, header, body = split_file(data)
    header = {k: v for k, v in header.items() if k not in ("data", "preprocessing")}
    body = body[:layers_end(header)]
    header["version"] = 1
    return build_file(header, body, version=1)


def assert_one_sentence(e: BaseException, path: Path) -> None:
    message = str(e)
    assert isinstance(e, UserError) and e.exit_code == 2
    assert "\n" not in message and str(path) in message, message


# ---------------------------------------------------------------------------- version and checksum

def test_files_carry_the_format_version_and_a_checksum_of_everything(good):
    data = good.read_bytes()
    version, header, _ = split_file(data)
    assert version == EXPORT_VERSION == 3 and header["version"] == 3 and header["format"] == "bnnctl-export"
    assert data[16:48] == hashlib.sha256(data[:16] + data[48:]).digest()
    assert header["data"]["dataset"] == "mnist" and header["data"]["preprocess"] == "scale"


def test_version_2_files_without_a_preprocessing_are_read_as_they_are(good, mlp):
    """Files of the format before the preprocessing went in (version 2) still load, checksum checked, and run."""
    _, header, body = split_file(good.read_bytes())
    assert header["preprocessing"] is None  # written by export_model alone, without the run's data
    v2 = good.with_name("v2.bnnx")
    v2.write_bytes(build_file({k: v for k, v in header.items() if k != "preprocessing"} | {"version": 2},
                              body[:layers_end(header)], 2))
    exported = load_export(v2, QUIET)
    assert exported.preprocessing is None and exported.data == header["data"]
    x = torch.randint(0, 256, (5, *exported.input_shape), dtype=torch.uint8)
    assert torch.equal(PackedEngine(exported).logits(x), PackedEngine(load_export(good, QUIET)).logits(x))
    with pytest.raises(DamagedExport, match="unknown fields preprocessing"):  # a version 2 header has none
        read_export(build_file(header | {"version": 2}, body, 2), v2)


def flipped(data: bytes, i: int, flip: int = 0xFF) -> bytes:
    return data[:i] + bytes([data[i] ^ flip]) + data[i + 1:]


def test_every_flipped_byte_is_one_sentence(good):
    """Byte by byte, in memory (read_export is load_export after the read); then a few through the file."""
    data = good.read_bytes()
    for i in range(len(data)):
        for flip in (0xFF, 0x01):
            with pytest.raises(ExportError) as info:
                read_export(flipped(data, i, flip), good)
            assert_one_sentence(info.value, good)
            if i >= len(MAGIC) + 4:  # past the signature and the version: the checksum catches it
                assert isinstance(info.value, DamagedFile) and "damaged" in str(info.value)
    bad = good.with_name("flipped.bnnx")
    for i in (3, 9, 14, 20, 60, len(data) // 2, len(data) - 1):
        bad.write_bytes(flipped(data, i))
        with pytest.raises(ExportError) as info:
            load_export(bad)
        assert_one_sentence(info.value, bad)


def test_cut_and_padded_files_are_damaged(good):
    data = good.read_bytes()
    bad = good.with_name("cut.bnnx")
    for size in (9, 16, 40, 48, 100, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:size])
        with pytest.raises(DamagedExport) as info:
            load_export(bad)
        assert_one_sentence(info.value, bad)
    bad.write_bytes(data + b"\0" * 64)
    with pytest.raises(DamagedExport, match="checksum"):
        load_export(bad)


def test_a_flipped_byte_in_a_version_1_file_never_crashes(good):
    """Without a checksum a flipped byte may go unseen (the note says so), but never crashes the reader."""
    data = as_version_1(good.read_bytes())
    loaded = 0
    for i in range(0, len(data), 3):
        try:
            read_export(flipped(data, i), good, QUIET)
            loaded += 1
        except ExportError as e:
            assert_one_sentence(e, good)
    assert loaded < len(data) // 6  # the header checks catch most


# ---------------------------------------------------------------------------- header against data

def _edit(header: dict, body: bytes, change) -> tuple[dict, bytes]:
    header = json.loads(json.dumps(header))
    out = change(header, bytearray(body))
    return header, bytes(out) if isinstance(out, (bytes, bytearray)) else body


def _set_tensor_value(layer: int, name: str, index: int, value: int, dtype: str):
    def change(header, body):
        entry = header["layers"][layer]["tensors"][name]
        t = torch.frombuffer(body, dtype=getattr(torch, dtype), count=entry["nbytes"] // torch.empty(
            0, dtype=getattr(torch, dtype)).element_size(), offset=entry["offset"])
        t[index] = value
        return body
    return change


def _layer(i, **fields):
    def change(header, body):
        header["layers"][i].update(fields)
    return change


def _tensor(i, name, **fields):
    def change(header, body):
        header["layers"][i]["tensors"][name].update(fields)
    return change


HEADER_DAMAGE = {
    "a layer's role": (_layer(1, role="output"), "role 'output'"),
    "the first layer's role": (_layer(0, role="hidden"), "role 'hidden'"),
    "an unknown kind": (_layer(1, kind="lstm"), "unknown kind 'lstm'"),
    "the input shape": (lambda h, b: h.update(input_shape=[1, 8, 9]), "model's input shape"),
    "a layer's input shape": (_layer(1, in_shape=[63]), "layer before it gives"),
    "the layer count (one dropped)": (lambda h, b: h["layers"].pop(), "where its place makes it 'output'"),
    "the layer count (one repeated)": (lambda h, b: h["layers"].insert(1, h["layers"][1]), "starts at byte"),
    "an output count": (_layer(1, out_features=65), "shape"),
    "the number of classes": (lambda h, b: h.update(num_classes=11), "11 classes"),
    "a tensor's shape": (_tensor(0, "weight_bits", shape=[64, 2]), "shape"),
    "a tensor's size": (_tensor(1, "threshold", nbytes=255), "bytes"),
    "a tensor's offset": (_tensor(1, "threshold", offset=0), "starts at byte"),
    "a tensor's dtype": (_tensor(1, "threshold", dtype="float32"), "stored as 'float32'"),
    "a missing tensor": (lambda h, b: h["layers"][1]["tensors"].pop("threshold"), "carries the tensors"),
    "an unknown tensor": (lambda h, b: h["layers"][2]["tensors"].update(bogus=h["layers"][2]["tensors"]["scale"]),
                          "carries the tensors"),
    "a dense layer with a kernel": (_layer(1, kernel_size=3, padding=1), "is dense"),
    "an unknown header field": (lambda h, b: h.update(extra=1), "unknown fields extra"),
    "a missing header field": (lambda h, b: h.pop("layers"), "lacks layers"),
    "the header's own version": (lambda h, b: h.update(version=1), f"preamble says {EXPORT_VERSION}"),
    "the input encoding": (lambda h, b: h.update(input_encoding="uint9"), "input encoding 'uint9'"),
    "a float where an integer goes": (_layer(1, out_features=64.0), "not an integer"),
    "a boolean where an integer goes": (_layer(0, pool=True), "not an integer"),
    "a direction": (_set_tensor_value(1, "direction", 0, 3, "int8"), "directions"),
    "a threshold out of range": (_set_tensor_value(1, "threshold", 0, 1000, "int32"), "outside"),
    "an infinite output scale": (_set_tensor_value(2, "scale", 0, float("inf"), "float64"), "infinite"),
    "a NaN float threshold": (_set_tensor_value(0, "float_threshold", 0, float("nan"), "float32"), "NaN"),
    "trailing data": (lambda h, b: b + b"\0" * 64, "data section holds"),
    "the header is not an object": (lambda h, b: h.clear() or h.update(layers="x"), "lacks"),
}


@pytest.mark.parametrize("case", list(HEADER_DAMAGE))
def test_a_header_that_disagrees_with_its_data_is_refused(good, case):
    change, message = HEADER_DAMAGE[case]
    _, header, body = split_file(good.read_bytes())
    header, body = _edit(header, body, change)
    for v in (EXPORT_VERSION, 1):  # checksummed or not, the header checks hold
        if v == 1 and case == "the header's own version":
            continue  # as a version 1 file, that header agrees with its preamble
        if v == 1:
            header = {k: val for k, val in header.items() if k not in ("data", "preprocessing")} | (
                {"version": 1} if "version" in header else {})
        bad = good.with_name(f"bad-v{v}.bnnx")
        bad.write_bytes(build_file(header, body, v))
        with pytest.raises(DamagedExport, match=re.escape(message)) as info:
            load_export(bad, QUIET)
        assert_one_sentence(info.value, bad)
        assert isinstance(info.value, DamagedFile)


def test_set_padding_bits_in_the_weights_are_damage(tmp_path):
    record, model = train_tiny("convnet", steps=1)  # a first layer of 3 * 3 * 3 = 27 inputs per unit
    path = tmp_path / "conv.bnnx"
    save_export(export_model(record, model), path)
    _, header, body = split_file(path.read_bytes())
    header, body = _edit(header, body, _set_tensor_value(0, "weight_bits", 0, 1 << 40, "int64"))
    path.write_bytes(build_file(header, body))
    with pytest.raises(DamagedExport, match="bits set past its 27 inputs") as info:
        load_export(path)
    assert_one_sentence(info.value, path)


def test_a_header_that_is_not_json_is_damaged(good):
    _, _, body = split_file(good.read_bytes())
    text = b"[" * 100000
    fixed = MAGIC + struct.pack("<II", 2, len(text))
    bad = good.with_name("deep.bnnx")
    bad.write_bytes(fixed + hashlib.sha256(fixed + text + body).digest() + text + body)
    with pytest.raises(DamagedExport, match="not valid JSON"):
        load_export(bad)


def test_version_1_files_load_with_a_note(good, capsys):
    v1 = good.with_name("v1.bnnx")
    v1.write_bytes(as_version_1(good.read_bytes()))
    old, new = load_export(v1), load_export(good)
    assert "cannot verify" in capsys.readouterr().err
    assert old.data is None and new.data is not None
    for a, b in zip(old.layers, new.layers):
        assert a.describe() == b.describe() and torch.equal(a.weight_bits, b.weight_bits)
        assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in b.tensors)
    x = images(30, (1, 8, 8), 1)
    assert torch.equal(PackedEngine(old).logits(x), PackedEngine(new).logits(x))
    console = Console(file=io.StringIO(), width=300)
    load_export(v1, console)
    assert "version 1" in console.file.getvalue() and "cannot verify" in console.file.getvalue()


# ---------------------------------------------------------------------------- the commands

def write_tiny_run(tmp_path: Path, recipe_path: Path, arch_overrides=None) -> tuple[Path, dict, torch.nn.Module]:
    cfg = load_recipe(recipe_path, arch_overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8), 10).eval()
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": cfg.to_dict(), "input_shape": [1, 8, 8],
              "num_classes": 10, "dataset": "tiny", "variant": "npz", "epoch": 1, "test_error_pct": None,
              "valid_error_pct": None}
    run = tmp_path / "run"
    run.mkdir()
    atomic_torch_save({**record, "model": model.state_dict()}, run / "best.pt")
    (run / "recipe.yaml").write_text(dump_recipe(cfg))
    return run, record, model


def error_in(output: str) -> str:
    match = re.search(r"error: (\d+\.\d+)%", output)
    assert match, output
    return match.group(1)


def said(result) -> str:
    """The command's output with the console's line wrapping undone."""
    return " ".join(result.output.split())


def test_eval_accepts_an_export_and_runs_the_packed_engine(tmp_path, tiny_recipe):
    run, _, _ = write_tiny_run(tmp_path, tiny_recipe)
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(run)]).exit_code == 0
    export = run / "model.bnnx"
    by_float = runner.invoke(app, ["eval", str(run), "--device", "cpu"])
    by_engine = runner.invoke(app, ["eval", str(run), "--engine", "xnor", "--device", "cpu"])
    on_export = runner.invoke(app, ["eval", str(export), "--device", "cpu"])
    assert by_float.exit_code == by_engine.exit_code == on_export.exit_code == 0, on_export.output
    assert "packed engine" in said(on_export)
    assert error_in(on_export.output) == error_in(by_engine.output) == error_in(by_float.output)
    rebuilt = runner.invoke(app, ["eval", str(export), "--engine", "float", "--device", "cpu"])
    assert rebuilt.exit_code == 0 and "rebuilt from the export" in said(rebuilt)
    assert error_in(rebuilt.output) == error_in(on_export.output)
    # a version 1 export reads its data from the recipe.yaml beside it
    v1 = run / "old.bnnx"
    v1.write_bytes(as_version_1(export.read_bytes()))
    old = runner.invoke(app, ["eval", str(v1), "--device", "cpu"])
    assert old.exit_code == 0 and error_in(old.output) == error_in(on_export.output)
    assert "cannot verify" in said(old)
    lonely = tmp_path / "lonely.bnnx"
    lonely.write_bytes(v1.read_bytes())
    refused = runner.invoke(app, ["eval", str(lonely), "--device", "cpu"])
    assert refused.exit_code == 2 and "recipe.yaml" in said(refused) and "Traceback" not in refused.output


def test_eval_of_a_damaged_or_unsuitable_export_is_one_sentence(tmp_path, good):
    runner = CliRunner()
    data = good.read_bytes()
    bad = tmp_path / "bad.bnnx"
    bad.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    result = runner.invoke(app, ["eval", str(bad), "--device", "cpu"])
    assert result.exit_code == 2 and "damaged" in said(result) and "Traceback" not in result.output
    renamed = tmp_path / "model.bin"  # found by its signature, whatever its name
    renamed.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    assert runner.invoke(app, ["eval", str(renamed), "--device", "cpu"]).exit_code == 2
    record, model = train_tiny("convnet", steps=1)
    conv = tmp_path / "conv.bnnx"
    save_export(export_model(record, model), conv)
    result = runner.invoke(app, ["eval", str(conv), "--engine", "float", "--device", "cpu"])
    assert result.exit_code == 2 and "MLPs only" in said(result) and "Traceback" not in result.output


def test_export_creates_a_missing_folder(tmp_path, tiny_recipe):
    run, _, _ = write_tiny_run(tmp_path, tiny_recipe)
    runner = CliRunner()
    deep = tmp_path / "new" / "deeper" / "m.bnnx"
    result = runner.invoke(app, ["export", str(run), "-o", str(deep)])
    assert result.exit_code == 0, result.output
    assert deep.is_file() and (deep.parent / "m.export.json").is_file()
    load_export(deep)
    folder = tmp_path / "existing"
    folder.mkdir()
    assert runner.invoke(app, ["export", str(run), "-o", str(folder)]).exit_code == 0
    assert (folder / "model.bnnx").is_file()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = runner.invoke(app, ["export", str(run), "-o", str(blocker / "sub" / "m.bnnx")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "a file stands where its folder" in said(result)


# ---------------------------------------------------------------------------- exact thresholds

def test_engine_threshold_comparisons_are_exact_past_two_to_the_24():
    big = 2 ** 24
    value = torch.tensor([[big, big + 1, -big - 1]], dtype=torch.int32)
    threshold = torch.tensor([big + 1, big + 1, -big], dtype=torch.int32)
    assert kernels.unpack(_pack_ge(value, threshold), 3).tolist() == [[-1.0, 1.0, -1.0]]
    # float32 pre-activations (the float kernels) against integer thresholds float32 cannot hold
    f = torch.tensor([[float(big), float(big + 2)]])
    t = torch.tensor([big + 1, big + 1], dtype=torch.int32)
    assert kernels.unpack(_pack_ge(f, t), 2).tolist() == [[-1.0, 1.0]]
    assert _pm1_ge(f, t).tolist() == [[-1.0, 1.0]]
    assert (f >= t.float()).tolist() == [[True, True]]  # what the float32 comparison said
    assert _pm1_ge(torch.tensor([[1.5, float("nan")]]), torch.tensor([1.5, 0.0])).tolist() == [[1.0, -1.0]]


def test_folded_integer_thresholds_are_exact_in_float64():
    direction = torch.tensor([1, -1, 1, -1], dtype=torch.int8)
    t = torch.tensor([2 ** 24 + 0.5, 2 ** 24 + 0.5, float("inf"), -float("inf")], dtype=torch.float64)
    assert integer_thresholds(direction, t, 1, 2 ** 26).tolist() == [2 ** 24 + 1, 2 ** 24, 2 ** 26 + 1, -2 ** 26 - 1]
    with pytest.raises(ExportError, match="NaN"):
        integer_thresholds(direction, torch.tensor([float("nan")] * 4), 1, 10)


def test_float_reconstruction_compares_thresholds_exactly():
    sign = ThresholdSign(torch.tensor([1, -1], dtype=torch.int8), torch.tensor([2 ** 24 + 1, 2 ** 24 + 1],
                                                                                 dtype=torch.int32))
    y = torch.tensor([[float(2 ** 24), float(2 ** 24)]])
    assert sign(y).tolist() == [[-1.0, 1.0]]


def test_float_reconstruction_predicts_what_the_engine_does(mlp):
    record, model = mlp
    exported = export_model(record, model)
    x = images(200, (1, 8, 8), 5)
    from bnnctl.data import scale_to_pm1
    with torch.no_grad():
        rebuilt = float_model_from_export(exported)(scale_to_pm1(x)).argmax(1)
    assert torch.equal(rebuilt, PackedEngine(exported).predict(x))


def test_the_float_reconstruction_runs_in_the_dtype_it_is_given(mlp):
    """bnnctl bench --run X.bnnx times it in bfloat16 (torch-bf16): each layer hands the next its own dtype."""
    record, model = mlp
    rebuilt = float_model_from_export(export_model(record, model))
    x = scale_to_pm1(images(20, (1, 8, 8), 5))
    with torch.no_grad():
        fp32 = rebuilt(x)
        for dtype in (torch.bfloat16, torch.float64):
            low = copy.deepcopy(rebuilt).to(dtype)(x.to(dtype))
            assert low.shape == fp32.shape and low.dtype == torch.float64  # the output affine's logits
        assert torch.equal(copy.deepcopy(rebuilt).to(torch.float64)(x.double()).argmax(1), fp32.argmax(1))


def test_the_float_kernel_refuses_layers_float32_cannot_sum_exactly():
    fan_in = 2 ** 24
    layer = ExportedLayer(kind="dense", role="hidden", in_shape=(fan_in,), out_features=1,
                          weight_bits=torch.zeros(1, kernels.words_for(fan_in), dtype=torch.int64),
                          tensors={"direction": torch.ones(1, dtype=torch.int8),
                                   "threshold": torch.zeros(1, dtype=torch.int32)})
    with pytest.raises(EngineError, match="2\\^24") as info:
        _FloatDense(layer, torch.device("cpu"), False, "tuned")
    assert "\n" not in str(info.value)
