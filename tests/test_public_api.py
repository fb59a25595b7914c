"""``import bnnctl``: the public API's names, their lazy import, and the helpers added for it."""
from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bnnctl
from bnnctl.core.layers import BinaryLinear, SignActivation
from bnnctl.core.norms import ShiftBatchNorm
from bnnctl.infer.exported import ExportError
from bnnctl.infer.fold import export_model, export_sequential
from bnnctl.optim import param_groups

REPO = Path(__file__).resolve().parent.parent
PUBLIC = [name for name in bnnctl.__all__ if name != "__version__"]


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, cwd=REPO, check=True)
    return done.stdout.strip()


def test_importing_bnnctl_imports_neither_torch_nor_any_of_its_modules():
    loaded = _python("import sys, bnnctl\n"
                     "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('bnnctl.')))")
    assert loaded == "[]"


def test_bnnctl_help_does_not_import_torch():
    code = ("import runpy, sys\n"
            "sys.argv = ['bnnctl', '--help']\n"
            "try:\n"
            "    runpy.run_module('bnnctl', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            "print('torch' in sys.modules)\n")
    assert _python(code).splitlines()[-1] == "False"


def test_a_public_name_is_imported_on_first_use_and_only_its_module_with_it():
    loaded = _python("import sys, bnnctl\n"
                     "bnnctl.sign_pm1\n"
                     "print('bnnctl.core.binarize' in sys.modules, 'bnnctl.infer.engine' in sys.modules)")
    assert loaded == "True False"


def test_every_public_name_resolves_is_listed_by_dir_and_documented():
    assert bnnctl.__version__ == "0.1.0" and "__version__" in dir(bnnctl)
    for name in PUBLIC:
        value = getattr(bnnctl, name)
        assert value.__name__ == name and value.__module__.startswith("bnnctl.")
        assert name in dir(bnnctl)
        assert value.__doc__ and value.__doc__.strip(), f"{name} has no docstring"
        assert f"``{name}``" in bnnctl.__doc__, f"the package docstring does not mention {name}"


def test_public_names_are_the_objects_the_modules_define():
    from bnnctl.infer.bnnx import load_export, save_export
    from bnnctl.infer.engine import PackedEngine
    from bnnctl.optim.shift_adamax import ShiftAdaMax
    assert (bnnctl.BinaryLinear, bnnctl.ShiftBatchNorm, bnnctl.PackedEngine) == (BinaryLinear, ShiftBatchNorm,
                                                                                 PackedEngine)
    assert (bnnctl.ShiftAdaMax, bnnctl.save_export, bnnctl.load_export) == (ShiftAdaMax, save_export, load_export)
    assert bnnctl.export_sequential is export_sequential


def test_no_public_name_shadows_a_submodule_and_submodules_still_import_from_the_package():
    submodules = {m.name for m in pkgutil.iter_modules(bnnctl.__path__)}
    assert not submodules & set(PUBLIC)
    from bnnctl import kernels, paper
    assert kernels.__name__ == "bnnctl.kernels" and paper.__name__ == "bnnctl.paper"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        bnnctl.Nonexistent
    with pytest.raises(ImportError, match="cannot import name 'Nonexistent'"):
        exec("from bnnctl import Nonexistent", {})


def _tiny_mlp(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), BinaryLinear(16, 8, bias=bias), ShiftBatchNorm(8), SignActivation(),
                         BinaryLinear(8, 3, bias=bias), nn.BatchNorm1d(3))


def test_param_groups_with_lr_sets_each_groups_lr_to_lr_times_its_scale():
    model = _tiny_mlp()
    groups = param_groups(model, lr=0.5)
    assert [g["lr"] for g in groups] == [0.5 * g["lr_scale"] for g in groups]
    assert groups[0]["lr_scale"] == pytest.approx(1 / (1.5 / 24) ** 0.5) and groups[-1]["lr_scale"] == 1.0
    assert all("lr" not in g for g in param_groups(model))
    assert [g["lr_scale"] for g in param_groups(model, use_lr_scale=False)] == [1.0, 1.0, 1.0]


def test_export_sequential_equals_export_model_of_the_same_record():
    model = _tiny_mlp()
    model.train()
    model(torch.randn(32, 1, 4, 4))
    record = {"input_shape": [1, 4, 4], "num_classes": 3, "recipe": {"name": "tiny", "data": {"preprocess": "scale"}}}
    from_record = export_model(record, model)
    direct = export_sequential(model, (1, 4, 4), 3, input_encoding="uint8_scale")
    assert direct.input_encoding == from_record.input_encoding == "uint8_scale"
    assert (direct.input_shape, direct.num_classes) == (from_record.input_shape, from_record.num_classes) == ((1, 4, 4), 3)
    for a, b in zip(direct.layers, from_record.layers):
        assert a.describe() == b.describe() and torch.equal(a.weight_bits, b.weight_bits)
        assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert direct.info == {} and direct.data is None
    assert export_sequential(model, (1, 4, 4), 3).input_encoding == "float"


def test_export_sequential_refuses_an_unknown_input_encoding_in_one_sentence():
    with pytest.raises(ExportError, match="input_encoding must be 'uint8_scale' or 'float', got 'uint8'"):
        export_sequential(_tiny_mlp(), (1, 4, 4), 3, input_encoding="uint8")
