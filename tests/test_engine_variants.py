"""The packed engine's variant table (``bnnctl.infer.variants``): every exact variant predicts the same classes,
the default is the documented rule for the batch at hand, and a variant that cannot run a model says why."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.errors import UserError
from bnnctl.infer import engine as engine_module
from bnnctl.infer.engine import PackedEngine, make_engine
from bnnctl.infer.fold import export_model
from bnnctl.infer.variants import ENGINE_VARIANTS, LARGE_BATCH, VariantRefused, check_variant, default_variant
from tests.test_export_engine import ARCHS, images, model_trace, prepared, train_tiny
from tests.test_export_file import error_in, said, write_tiny_run

CPU_EXACT = [name for name, v in ENGINE_VARIANTS.items() if v.exact and "cpu" in v.devices]


@pytest.fixture(scope="module", params=["mlp", "convnet"])
def exported_and_model(request):
    record, model = prepared(request.param)
    return request.param, export_model(record, model), model


@pytest.mark.parametrize("batch", [1, 3, LARGE_BATCH, 50])
def test_every_exact_variant_predicts_the_float_models_classes(exported_and_model, batch):
    arch, exported, model = exported_and_model
    x = images(50, ARCHS[arch][2], 5)
    expected = model_trace(model, x)[-1].argmax(1)
    assert set(CPU_EXACT) >= {"xnor", "xnor-bitplane", "xnor-integer", "xnor-int8", "baseline"}
    for name in CPU_EXACT:
        got = make_engine(exported, "cpu", name).predict(x, batch_size=batch)
        assert torch.equal(got, expected), f"{name}: {(got != expected).sum().item()} predictions differ"
    assert torch.equal(make_engine(exported, "cpu").predict(x, batch_size=batch), expected)


def fake_model(encoding="uint8_scale", kind="dense", fan_in=784, padding=1, kernel_size=3, preprocess="scale"):
    """What the rule and the refusals read of an exported model."""
    layer = SimpleNamespace(kind=kind, fan_in=fan_in, padding=padding, kernel_size=kernel_size)
    return SimpleNamespace(input_encoding=encoding, layers=[layer, SimpleNamespace(kind="dense", fan_in=64)],
                           data={"preprocess": preprocess})


@pytest.mark.parametrize("device,batch,fast_int8,expected", [
    ("cpu", 1, False, "plan-bitplane"), ("cpu", 1, True, "plan-bitplane"),
    ("cpu", LARGE_BATCH - 1, True, "plan-bitplane"),
    ("cpu", LARGE_BATCH, True, "xnor-int8"), ("cpu", 1000, True, "xnor-int8"),
    ("cpu", LARGE_BATCH, False, "xnor-integer"), ("cpu", 1000, False, "xnor-integer"),
    ("cuda", 1, True, "xnor-integer"), ("cuda", 10000, True, "xnor-integer"),
])
def test_the_default_is_the_documented_rule(device, batch, fast_int8, expected):
    assert default_variant(fake_model(), device, batch, fast_int8) == expected


@pytest.mark.parametrize("batch,expected", [(1, "plan-bitplane"), (LARGE_BATCH - 1, "plan-bitplane"),
                                            (LARGE_BATCH, "xnor-integer")])
def test_a_convolution_first_runs_on_the_plan_for_few_images(batch, expected):
    assert default_variant(fake_model(kind="conv", fan_in=27), "cpu", batch, False) == expected


@pytest.mark.parametrize("device,batch,expected", [("cpu", 1, "plan"), ("cpu", 1000, "xnor"), ("cuda", 1000, "xnor")])
def test_a_model_on_other_inputs_defaults_to_the_float_first_layer(device, batch, expected):
    model = fake_model(encoding="float", preprocess="standardize")
    assert default_variant(model, device, batch, True) == expected
    with pytest.raises(VariantRefused, match="trained on inputs preprocessed as 'standardize'"):
        check_variant("xnor-integer", model, device)


def test_the_rule_passes_over_a_variant_that_cannot_run_the_model():
    wide = fake_model(fan_in=40_000)  # past 2^24 / 510 inputs per unit: the integer first layer would round
    assert ENGINE_VARIANTS["xnor-integer"].refusal(wide, "cpu") is not None
    assert default_variant(wide, "cpu", 1000, False) == "xnor-bitplane"
    assert default_variant(wide, "cuda", 1000, False) == "xnor-bitplane"
    shrinking = fake_model(kind="conv", fan_in=27, padding=0)  # the int8 first layer keeps the image's size only
    assert "keep the image's size" in ENGINE_VARIANTS["xnor-int8"].refusal(shrinking, "cpu")
    assert default_variant(shrinking, "cpu", 1000, True) == "xnor-integer"


def test_the_engine_picks_its_first_layer_for_each_batch(monkeypatch):
    record, model = train_tiny("mlp", steps=1)
    engine = PackedEngine(export_model(record, model))
    for fast, large in ((True, "int8"), (False, "integer")):
        monkeypatch.setattr(engine_module, "torch_int8_is_fast", lambda fast=fast: fast)
        assert engine.first_layer_for(1) == "bitplane" and engine.first_layer_for(LARGE_BATCH) == large
        assert engine.variant_for(1) == "plan-bitplane" and engine._plan_for(1) is not None
        assert engine._plan_for(LARGE_BATCH) is None  # its own layers
    x = torch.randint(0, 256, (LARGE_BATCH + 3, 1, 8, 8), dtype=torch.uint8)
    by_plan = torch.cat([engine.logits(x[i:i + 1]) for i in range(len(x))])
    assert torch.equal(by_plan, engine.logits(x))  # one image at a time on the plan, all at once on the layers
    layered = PackedEngine(export_model(record, model), xnor_impl="csa")  # another kernel: no plan
    assert not layered.variant_for(1).startswith("plan") and layered._plan_for(1) is None
    float_hidden = PackedEngine(export_model(record, model), hidden="float")
    assert float_hidden.first_layer_for(1000) == "float"  # no row of the rule has float hidden layers but xnor's
    assert PackedEngine(export_model(record, model), first_layer="integer").first_layer_for(1) == "integer"


def test_a_variant_that_cannot_run_is_one_sentence():
    record, model = train_tiny("mlp", steps=1)
    exported = export_model(record, model)
    with pytest.raises(UserError, match="unknown engine variant 'fast'; choose auto or one of xnor-int8"):
        make_engine(exported, "cpu", "fast")
    with pytest.raises(UserError, match="xnor-bitplane-tc cannot run this model: it runs on cuda only, not on cpu"):
        make_engine(exported, "cpu", "xnor-bitplane-tc")
    record["recipe"]["data"]["preprocess"] = "standardize"
    with pytest.raises(UserError, match="xnor-int8 cannot run this model: it needs a model trained on 8-bit"):
        make_engine(export_model(record, model), "cpu", "xnor-int8")


def test_eval_lists_the_variants_and_refuses_a_variant_without_the_packed_engine(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0
    text = " ".join(shown.output.replace("│", " ").split())
    for name, v in ENGINE_VARIANTS.items():
        assert f"{name}: {v.description}" in text, name
    assert "auto (the default)" in shown.output
    run = tmp_path / "run"
    run.mkdir()
    float_engine = runner.invoke(app, ["eval", str(run), "--engine", "float", "--variant", "xnor"])
    assert float_engine.exit_code == 2 and "give it with --engine xnor" in float_engine.output
    unknown = runner.invoke(app, ["eval", str(run), "--engine", "xnor", "--variant", "fast"])
    assert unknown.exit_code == 2 and "unknown --variant 'fast'" in unknown.output


def test_eval_runs_each_variant_named_to_the_same_error(tmp_path, tiny_recipe):
    run, _, _ = write_tiny_run(tmp_path, tiny_recipe)
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(run)]).exit_code == 0
    export = run / "model.bnnx"
    default = runner.invoke(app, ["eval", str(export), "--device", "cpu"])
    assert default.exit_code == 0, default.output
    assert "the default for batches of 1,000" in said(default)
    for name in CPU_EXACT:
        for target in (export, run):
            named = runner.invoke(app, ["eval", str(target), "--engine", "xnor", "--variant", name, "--device", "cpu"])
            assert named.exit_code == 0, named.output
            assert f"variant {name})" in said(named) and error_in(named.output) == error_in(default.output), name
    refused = runner.invoke(app, ["eval", str(export), "--variant", "xnor-bitplane-tc", "--device", "cpu"])
    assert refused.exit_code == 2 and "runs on cuda only, not on cpu" in said(refused)
