"""`bnnctl summary`: per-layer shapes, bits and MACs, checked against counts done by hand."""
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.core.models import build_model
from bnnctl.recipe import load_recipe
from bnnctl.report.summary import summarize, summarize_model

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_mnist_mlp_counts_by_hand():
    s = summarize("mnist")  # 784-4096-4096-4096-10, biases, BN after every layer
    assert (s.dataset, s.input_shape, s.num_classes) == ("mnist", (1, 28, 28), 10)
    linear = [layer for layer in s.layers if layer.kind == "BinaryLinear"]
    assert [layer.output_shape for layer in linear] == [(4096,), (4096,), (4096,), (10,)]
    assert [layer.binary_weights for layer in linear] == [784 * 4096, 4096 * 4096, 4096 * 4096, 4096 * 10]
    assert [layer.values for layer in linear] == [784 * 4096 + 4096, 4096 * 4096 + 4096, 4096 * 4096 + 4096,
                                                  4096 * 10 + 10]
    # The first layer sees real pixels; the others see the sign activations (through dropout).
    assert [layer.binary_input for layer in linear] == [False, True, True, True]
    assert [layer.real_macs for layer in linear] == [784 * 4096, 0, 0, 0]
    assert [layer.binary_macs for layer in linear] == [0, 4096 * 4096, 4096 * 4096, 4096 * 10]

    binary_weights = 784 * 4096 + 2 * 4096 * 4096 + 4096 * 10          # 36,806,656
    biases = 3 * 4096 + 10
    bn = 4 * (3 * 4096 + 10)  # gamma, beta, running mean and variance; num_batches_tracked is no value
    assert s.total("binary_weights") == binary_weights == 36_806_656
    assert s.total("values") == binary_weights + biases + bn
    assert s.total("bnn_bits") == binary_weights + 32 * (biases + bn)
    assert s.total("float_bits") == 32 * (binary_weights + biases + bn)
    assert s.total("binary_macs") == 2 * 4096 * 4096 + 4096 * 10 == 33_595_392
    assert s.total("real_macs") == 784 * 4096 == 3_211_264
    assert s.total("macs") == binary_weights  # an MLP does one MAC per weight per image


def test_convnet_shapes_and_macs(tmp_path):
    recipe = yaml.safe_load((REPO / "recipes" / "cifar10.yaml").read_text())
    recipe["model"].update(conv=[4, "M", 8], fc=[16])
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_recipe(path)
    layers = summarize_model(build_model(cfg.model, (3, 8, 8), 10), (3, 8, 8))
    kinds = [layer.kind for layer in layers]
    assert kinds == ["BinaryConv2d", "MaxPool2d", "BatchNorm2d", "SignActivation", "BinaryConv2d", "BatchNorm2d",
                     "SignActivation", "Flatten", "BinaryLinear", "BatchNorm1d", "SignActivation", "BinaryLinear",
                     "BatchNorm1d"]
    conv1, pool, conv2, fc1, fc2 = layers[0], layers[1], layers[4], layers[8], layers[11]
    assert conv1.output_shape == (4, 8, 8) and pool.output_shape == (4, 4, 4) and conv2.output_shape == (8, 4, 4)
    assert conv1.kernel_size == (3, 3)
    assert (conv1.macs, conv1.binary_input, conv1.real_macs) == (4 * 8 * 8 * 3 * 9, False, 6912)
    assert (conv2.macs, conv2.binary_input, conv2.binary_macs) == (8 * 4 * 4 * 4 * 9, True, 4608)
    assert (fc1.macs, fc1.binary_input) == (128 * 16, True) and fc2.macs == 16 * 10
    assert conv1.binary_weights == 4 * 3 * 9 and conv1.values == 4 * 3 * 9 + 4
    assert layers[2].values == 4 * 4 and layers[2].bnn_bits == 32 * 16


def test_summary_cli_by_name_and_path():
    by_name = runner.invoke(app, ["summary", "mnist"])
    assert by_name.exit_code == 0, by_name.output
    assert "36,806,656" in by_name.output and "33,595,392" in by_name.output and "3,211,264" in by_name.output
    by_path = runner.invoke(app, ["summary", str(REPO / "recipes" / "svhn.yaml")])
    assert by_path.exit_code == 0, by_path.output
    assert "256x4x4" in by_path.output  # the last max-pool's output


@pytest.mark.parametrize("name", ["no-such-recipe", "recipes/none.yaml"])
def test_summary_unknown_recipe_is_one_sentence(name):
    result = runner.invoke(app, ["summary", name])
    assert result.exit_code == 2
    assert "neither a file nor a shipped recipe" in result.output and "Traceback" not in result.output
