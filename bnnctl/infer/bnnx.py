"""The ``.bnnx`` file: an ExportedModel written whole, checksummed, and checked field by field when read.

File format (version 3), little-endian:
    8 bytes   MAGIC
    4 bytes   uint32 format version
    4 bytes   uint32 length of the JSON header
    32 bytes  SHA-256 of every other byte of the file: the 16 above, the header and the data
    header    UTF-8 JSON: model description, layers, the recipe's data section (what ``bnnctl eval``
              evaluates an export on), the fitted input preprocessing (null when the export was written
              without the training images), and for every tensor its dtype, shape, byte offset in the data
              section and size
    data      the tensors, each aligned to 64 bytes from the start of the data section: the layers' in
              order, then the preprocessing's

Reading a file checks the checksum, then every header field against the data (roles, shapes, the
layer chain, sizes, offsets, dtypes, the values a threshold or direction can take): a damaged file is
one sentence (``DamagedExport``), never a crash or a wrong answer. Version 2 files (no preprocessing)
are read as they are; version 1 files (no checksum field, no data section) with a note that they
cannot be verified.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from .. import __version__, kernels
from ..data import EXPORTED_PREPROCESSING, exported_shape
from ..errors import DamagedFile
from ..files import atomic_write_bytes
from .exported import (FLOAT_INPUT, INPUT_LEVELS, UINT8_SCALE, ExportedLayer, ExportedModel, ExportedPreprocessing,
                       ExportError, layer_tensor_names)

MAGIC = b"BNNCTLX\x00"
EXPORT_FORMAT = "bnnctl-export"
EXPORT_VERSION = 3
READABLE_EXPORT_VERSIONS = (1, 2, 3)
EXPORT_SUFFIX = ".bnnx"
ALIGN = 64
_FIXED = len(MAGIC) + 8  # magic, version, header length
_DIGEST = 32  # SHA-256, from version 2


class DamagedExport(ExportError, DamagedFile):
    """An export file that fails its checksum or whose header disagrees with its data."""


def _tensor_bytes(t: torch.Tensor) -> bytes:
    array = t.detach().cpu().contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _digest(fixed: bytes, rest: bytes | memoryview) -> bytes:
    h = hashlib.sha256(fixed)
    h.update(rest)
    return h.digest()


def save_export(exported: ExportedModel, path: Path | str) -> int:
    """Write the export file (format version EXPORT_VERSION, with its checksum) atomically; returns its
    size in bytes."""
    data = export_bytes(exported)
    atomic_write_bytes(Path(path), data)
    return len(data)


def export_bytes(exported: ExportedModel) -> bytes:
    """The export file's bytes, as ``save_export`` writes them (the native plan is built from them)."""
    blobs: list[bytes] = []
    offset = 0

    def add(t: torch.Tensor) -> dict[str, Any]:
        nonlocal offset
        data = _tensor_bytes(t)
        entry = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "offset": offset,
                 "nbytes": len(data)}
        pad = -len(data) % ALIGN
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
        return entry

    layers = []
    for layer in exported.layers:
        entry = layer.describe()
        entry["tensors"] = {"weight_bits": add(layer.weight_bits),
                            **{name: add(t) for name, t in layer.tensors.items()}}
        layers.append(entry)
    preprocessing = None
    if exported.preprocessing is not None:
        kind, tensors = exported.preprocessing.kind, exported.preprocessing.tensors
        preprocessing = {"kind": kind, "tensors": {name: add(tensors[name]) for name in EXPORTED_PREPROCESSING[kind]}}
    header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "bnnctl": __version__,
              "input_shape": list(exported.input_shape), "input_encoding": exported.input_encoding,
              "num_classes": exported.num_classes, "info": exported.info, "data": exported.data, "layers": layers, "preprocessing": preprocessing}
    text = json.dumps(header, indent=1, default=str).encode()
    text += b" " * (-(_FIXED + _DIGEST + len(text)) % ALIGN)
    fixed = MAGIC + struct.pack("<II", EXPORT_VERSION, len(text))
    rest = text + b"".join(blobs)
    return fixed + _digest(fixed, rest) + rest


def _damaged(path: Path, what: str) -> DamagedExport:
    return DamagedExport(f"{path} is a damaged bnnctl export file: {what}; export the run again or restore it "
                         "from a copy.")


# Header fields, per format version; the tensors each role carries and their dtypes.
_HEADER_FIELDS = {1: {"format", "version", "bnnctl", "input_shape", "input_encoding", "num_classes", "info", "layers"}}
_HEADER_FIELDS[2] = _HEADER_FIELDS[1] | {"data"}
_HEADER_FIELDS[3] = _HEADER_FIELDS[2] | {"preprocessing"}
_LAYER_FIELDS = {"kind", "role", "in_shape", "out_features", "kernel_size", "padding", "pool", "tensors"}
_ENTRY_FIELDS = {"dtype", "shape", "offset", "nbytes"}
_TENSOR_DTYPES = {"weight_bits": "int64", "direction": "int8", "threshold": "int32", "float_threshold": "float32",
                  "scale": "float64", "shift": "float64"}
_INPUT_ENCODINGS = (UINT8_SCALE, FLOAT_INPUT)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _HeaderReader:
    """Checks a parsed header against the data section and builds the ExportedModel; any disagreement is a
    DamagedExport naming the file and the field."""

    def __init__(self, path: Path, header: Any, body: memoryview, version: int):
        self.path, self.header, self.body, self.version = path, header, body, version
        self.offset = 0  # where the next tensor must start: the writer lays them out in header order

    def fail(self, what: str) -> DamagedExport:
        return _damaged(self.path, what)

    def int_field(self, value: Any, what: str, minimum: int) -> int:
        if not _is_int(value) or value < minimum:
            raise self.fail(f"{what} is {value!r}, not an integer >= {minimum}")
        return value

    def shape_field(self, value: Any, what: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or not all(_is_int(d) and d > 0 for d in value):
            raise self.fail(f"{what} is {value!r}, not a list of positive integers")
        return tuple(value)

    def read(self) -> ExportedModel:
        h = self.header
        if not isinstance(h, dict):
            raise self.fail("its header is not a JSON object")
        expected = _HEADER_FIELDS[self.version]
        if set(h) != expected:
            missing, unknown = sorted(expected - set(h)), sorted(set(h) - expected)
            raise self.fail(f"its header lacks {', '.join(missing)}" if missing
                            else f"its header has unknown fields {', '.join(unknown)}")
        if h["format"] != EXPORT_FORMAT:
            raise self.fail(f"its header names the format {h['format']!r}, not {EXPORT_FORMAT!r}")
        if h["version"] != self.version:
            raise self.fail(f"its header says format version {h['version']!r} where the file's preamble says "
                            f"{self.version}")
        input_shape = self.shape_field(h["input_shape"], "the input shape")
        if h["input_encoding"] not in _INPUT_ENCODINGS:
            raise self.fail(f"the input encoding {h['input_encoding']!r} is not one of {', '.join(_INPUT_ENCODINGS)}")
        num_classes = self.int_field(h["num_classes"], "the number of classes", 1)
        if not isinstance(h["info"], dict):
            raise self.fail("its info field is not a JSON object")
        data = h.get("data")
        if data is not None and not isinstance(data, dict):
            raise self.fail("its data field is not a JSON object")
        if not isinstance(h["layers"], list) or not h["layers"]:
            raise self.fail("its header lists no layers")
        layers: list[ExportedLayer] = []
        previous_out: tuple[int, ...] | None = None
        count = len(h["layers"])
        for i, entry in enumerate(h["layers"]):
            layer = self.layer(entry, i, count, input_shape, h["input_encoding"], previous_out)
            layers.append(layer)
            previous_out = layer.out_shape
        preprocessing = self.preprocessing(h["preprocessing"], h["input_encoding"], data,
                                           math.prod(input_shape)) if self.version >= 3 else None
        if layers[-1].out_features != num_classes:
            raise self.fail(f"its last layer has {layers[-1].out_features} outputs but the header says "
                            f"{num_classes} classes")
        if self.offset != len(self.body):
            raise self.fail(f"its data section holds {len(self.body)} bytes where its header describes "
                            f"{self.offset}")
        return ExportedModel(layers, input_shape, h["input_encoding"], num_classes, h["info"], data, preprocessing)

    def preprocessing(self, p: Any, encoding: str, data: dict[str, Any] | None,
                      values: int) -> ExportedPreprocessing | None:
        if p is None:
            return None
        if not isinstance(p, dict) or set(p) != {"kind", "tensors"}:
            raise self.fail("its preprocessing field is neither null nor an object of kind and tensors")
        kind = p["kind"]
        if not isinstance(kind, str) or kind not in EXPORTED_PREPROCESSING:
            raise self.fail(f"its preprocessing {kind!r} is not one of {', '.join(EXPORTED_PREPROCESSING)}")
        if (kind == "scale") != (encoding == UINT8_SCALE):
            raise self.fail(f"its preprocessing {kind!r} does not go with the input encoding {encoding!r}")
        if data is not None and "preprocess" in data and data["preprocess"] != kind:
            raise self.fail(f"its preprocessing {kind!r} is not the {data['preprocess']!r} its data section names")
        expected = EXPORTED_PREPROCESSING[kind]
        tensors = p["tensors"]
        if not isinstance(tensors, dict) or set(tensors) != set(expected):
            found = sorted(tensors) if isinstance(tensors, dict) else tensors
            raise self.fail(f"its preprocessing ({kind}) carries the tensors {found!r}, not "
                            f"{', '.join(sorted(expected))}")
        out: dict[str, torch.Tensor] = {}
        for name, entry in tensors.items():
            dtype, rule = expected[name]
            what = f"the preprocessing's {name}"
            t = self.entry(entry, what, str(dtype).replace("torch.", ""), exported_shape(rule, values))
            if not bool(torch.isfinite(t).all()):
                raise self.fail(f"{what} holds NaN or infinite values")
            out[name] = t
        if "std" in out and not float(out["std"][0]) > 0:
            raise self.fail("the preprocessing's std is not positive")
        return ExportedPreprocessing(kind, out)

    def layer(self, e: Any, i: int, count: int, input_shape: tuple[int, ...], encoding: str,
              previous_out: tuple[int, ...] | None) -> ExportedLayer:
        where = f"layer {i + 1} of {count}"
        if not isinstance(e, dict) or set(e) != _LAYER_FIELDS:
            raise self.fail(f"{where} in its header does not have the fields {', '.join(sorted(_LAYER_FIELDS))}")
        kind, role = e["kind"], e["role"]
        if kind not in ("dense", "conv"):
            raise self.fail(f"{where} is of unknown kind {kind!r}")
        expected_role = "output" if i == count - 1 else ("first" if i == 0 else "hidden")
        if role != expected_role:
            raise self.fail(f"{where} has the role {role!r} where its place makes it {expected_role!r}")
        in_shape = self.shape_field(e["in_shape"], f"the input shape of {where}")
        out = self.int_field(e["out_features"], f"the output count of {where}", 1)
        kernel_size = self.int_field(e["kernel_size"], f"the kernel size of {where}", 0)
        padding = self.int_field(e["padding"], f"the padding of {where}", 0)
        pool = self.int_field(e["pool"], f"the pooling of {where}", 0)
        if kind == "conv":
            if role == "output":
                raise self.fail(f"{where} is a convolution, but the output layer is dense")
            if len(in_shape) != 3 or kernel_size % 2 == 0 or padding != kernel_size // 2:
                raise self.fail(f"{where} is a convolution with input shape {list(in_shape)}, kernel size "
                                f"{kernel_size} and padding {padding}, which do not go together")
            if pool > 1 and pool > min(in_shape[1:]):
                raise self.fail(f"{where} pools by {pool} an image of {in_shape[1]}x{in_shape[2]}")
        elif kernel_size or padding or pool or len(in_shape) not in (1, 3):
            raise self.fail(f"{where} is dense but has kernel size {kernel_size}, padding {padding}, pooling {pool} "
                            f"and input shape {list(in_shape)}")
        if previous_out is None:
            fits = in_shape == input_shape if kind == "conv" else (
                len(in_shape) == 1 and in_shape[0] == math.prod(input_shape))
            if not fits:
                raise self.fail(f"the first layer takes inputs of shape {list(in_shape)}, but the model's input "
                                f"shape is {list(input_shape)}")
        elif in_shape != previous_out:
            raise self.fail(f"{where} takes inputs of shape {list(in_shape)}, but the layer before it gives "
                            f"{list(previous_out)}")
        layer = ExportedLayer(kind=kind, role=role, in_shape=in_shape, out_features=out, weight_bits=torch.empty(0),
                              kernel_size=kernel_size, padding=padding, pool=pool)
        tensors = e["tensors"]
        names = layer_tensor_names(role, encoding)
        if not isinstance(tensors, dict) or set(tensors) != names:
            found = sorted(tensors) if isinstance(tensors, dict) else tensors
            raise self.fail(f"{where} ({role}) carries the tensors {found!r}, not {', '.join(sorted(names))}")
        for name, entry in tensors.items():
            t = self.tensor(entry, name, layer, where)
            if name == "weight_bits":
                layer.weight_bits = t
            else:
                layer.tensors[name] = t
        self.values(layer, where)
        return layer

    def tensor(self, entry: Any, name: str, layer: ExportedLayer, where: str) -> torch.Tensor:
        shape = [layer.out_features, kernels.words_for(layer.fan_in)] if name == "weight_bits" else [layer.out_features]
        return self.entry(entry, f"the {name} of {where}", _TENSOR_DTYPES[name], shape, "the layer")

    def entry(self, entry: Any, what: str, dtype: str, shape: list[int], owner: str = "it") -> torch.Tensor:
        """The tensor a header entry describes, checked against its place in the data section."""
        if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
            raise self.fail(f"{what} is not described by {', '.join(sorted(_ENTRY_FIELDS))}")
        if entry["dtype"] != dtype:
            raise self.fail(f"{what} is stored as {entry['dtype']!r}, not {dtype}")
        if entry["shape"] != shape:
            raise self.fail(f"{what} has the shape {entry['shape']!r} where {owner} needs {shape}")
        itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        nbytes = math.prod(shape) * itemsize
        if entry["nbytes"] != nbytes:
            raise self.fail(f"{what} says it takes {entry['nbytes']!r} bytes where its shape takes {nbytes}")
        if entry["offset"] != self.offset:
            raise self.fail(f"{what} says it starts at byte {entry['offset']!r} of the data section, where it "
                            f"lies at byte {self.offset}")
        end = self.offset + nbytes
        padded = end + (-nbytes % ALIGN)
        if padded > len(self.body):
            raise self.fail(f"its data section ends at byte {len(self.body)}, before {what} (bytes {self.offset} "
                            f"to {end})")
        if any(self.body[end:padded]):
            raise self.fail(f"the padding after {what} is not zero")
        raw = bytearray(self.body[self.offset:end])
        self.offset = padded
        t = torch.frombuffer(raw, dtype=getattr(torch, dtype)) if raw else torch.empty(0, dtype=getattr(torch, dtype))
        return t.reshape(shape)

    def values(self, layer: ExportedLayer, where: str) -> None:
        """What the values themselves can be: padding bits zero, directions +/-1, thresholds in range."""
        rem = layer.fan_in % 64
        if rem and bool((layer.weight_bits[:, -1] & ~((1 << rem) - 1)).any()):
            raise self.fail(f"the weight bits of {where} have bits set past its {layer.fan_in} inputs")
        t = layer.tensors
        if "direction" in t and not bool(((t["direction"] == 1) | (t["direction"] == -1)).all()):
            raise self.fail(f"the directions of {where} are not all +1 or -1")
        if "threshold" in t:
            bound = layer.fan_in * (INPUT_LEVELS if layer.role == "first" else 1) + 1
            if bool((t["threshold"].long().abs() > bound).any()):
                raise self.fail(f"the integer thresholds of {where} lie outside [-{bound}, {bound}]")
        if "float_threshold" in t and bool(torch.isnan(t["float_threshold"]).any()):
            raise self.fail(f"the float thresholds of {where} hold NaN")
        for name in ("scale", "shift"):
            if name in t and not bool(torch.isfinite(t[name]).all()):
                raise self.fail(f"the output {name} of {where} holds NaN or infinite values")


def _versions_text() -> str:
    *most, last = map(str, READABLE_EXPORT_VERSIONS)
    return f"{', '.join(most)} and {last}" if most else last


def _note(console, text: str) -> None:
    if console is not None:
        console.print(f"[yellow]note:[/] {text}", highlight=False, soft_wrap=True)
    else:
        print(f"note: {text}", file=sys.stderr, flush=True)


def load_export(path: Path | str, console=None) -> ExportedModel:
    """Read an export file, its checksum and every header field verified against its data.

    A file that is not an export, of a version this bnnctl does not read, or damaged raises ExportError
    (DamagedExport for damage), one sentence. A version 1 file, which has no checksum, is read with a note
    (on ``console``, else on stderr) that it cannot be verified.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder, not a bnnctl export file.")
    if not path.is_file():
        raise ExportError(f"{path} does not exist.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ExportError(f"{path} cannot be read ({e.strerror or type(e).__name__}).") from None
    return read_export(data, path, console)


def read_export(data: bytes, path: Path | str, console=None) -> ExportedModel:
    """The model in an export file's bytes (``load_export`` without the reading); ``path`` names the file in
    messages. Checked as load_export checks it."""
    path = Path(path)
    if data[:len(MAGIC)] != MAGIC:
        raise ExportError(f"{path} is not a bnnctl export file (it does not start with the bnnctl export signature).")
    if len(data) < _FIXED:
        raise _damaged(path, "it is cut short")
    version, header_len = struct.unpack_from("<II", data, len(MAGIC))
    if version not in READABLE_EXPORT_VERSIONS:
        raise ExportError(f"{path} is a bnnctl export of format version {version}; this bnnctl reads versions "
                          f"{_versions_text()}, so export the run again with it "
                          "(or restore the file, if it is damaged).")
    start = _FIXED
    if version >= 2:
        start += _DIGEST
        if len(data) < start:
            raise _damaged(path, "it is cut short")
        if _digest(data[:_FIXED], memoryview(data)[start:]) != data[_FIXED:start]:
            raise _damaged(path, "its content does not match its checksum")
    if start + header_len > len(data):
        raise _damaged(path, "it is cut short")
    try:
        header = json.loads(data[start:start + header_len])
    except (ValueError, RecursionError):
        raise _damaged(path, "its header is not valid JSON") from None
    exported = _HeaderReader(path, header, memoryview(data)[start + header_len:], version).read()
    if version < 2:
        _note(console, f"{path} is a version {version} bnnctl export, which carries no checksum, so bnnctl cannot "
                       "verify it; export the run again for a verified file.")
    return exported
