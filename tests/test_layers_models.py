import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from bnnctl.core.layers import BinaryConv2d, BinaryLinear, SignActivation, clip_weights_, glorot_lr_scale
from bnnctl.core.models import build_model, count_parameters
from bnnctl.optim import build_optimizer, lr_at, param_groups, set_lr
from bnnctl.recipe import ScheduleConfig, load_recipe

from .conftest import REPO


def mnist_model_cfg():
    return load_recipe(REPO / "recipes" / "mnist.yaml").model


def test_glorot_lr_scale_matches_theano_formula():
    assert glorot_lr_scale(784, 4096) == pytest.approx(1 / math.sqrt(1.5 / (784 + 4096)))
    conv = BinaryConv2d(3, 128, 3)
    assert conv.lr_scale == pytest.approx(1 / math.sqrt(1.5 / (3 * 9 + 128 * 9)))


def test_binary_linear_uses_signs_of_latent_weights():
    layer = BinaryLinear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.2, -0.0, -0.9], [-0.1, 0.5, 0.0]]))
    x = torch.tensor([[1.0, 2.0, 4.0]])
    assert layer(x).tolist() == [[1 + 2 - 4, -1 + 2 + 4]]


def test_latent_weights_start_in_range_and_are_clipped():
    layer = BinaryLinear(50, 40)
    assert layer.weight.abs().max() <= 1
    with torch.no_grad():
        layer.weight.mul_(5)
    clip_weights_(nn.Sequential(layer))
    assert layer.weight.abs().max() == 1


def test_mnist_mlp_shape_and_parameter_count():
    model = build_model(mnist_model_cfg(), (1, 28, 28), 10)
    widths = [784, 4096, 4096, 4096, 10]
    linear = sum(a * b + b for a, b in zip(widths, widths[1:]))
    bn = sum(2 * b for b in widths[1:])
    assert count_parameters(model) == linear + bn == 36_843_550
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    kinds = [type(m).__name__ for m in model]
    assert kinds[:2] == ["Flatten", "Dropout"]
    assert kinds[2:6] == ["BinaryLinear", "BatchNorm1d", "SignActivation", "Dropout"]
    assert kinds[-2:] == ["BinaryLinear", "BatchNorm1d"]
    bn_layers = [m for m in model if isinstance(m, nn.BatchNorm1d)]
    assert all(m.eps == 1e-4 and m.momentum == 0.1 for m in bn_layers)


def test_convnet_pools_between_conv_and_bn():
    cfg = replace(mnist_model_cfg(), arch="convnet", conv=[8, "M", 16, "M"], fc=[32], dropout_in=0.0,
               dropout_hidden=0.0, hidden=[])
    model = build_model(cfg, (3, 16, 16), 10)
    kinds = [type(m).__name__ for m in model]
    assert kinds[:4] == ["BinaryConv2d", "MaxPool2d", "BatchNorm2d", "SignActivation"]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    first_fc = next(m for m in model if isinstance(m, BinaryLinear))
    assert first_fc.in_features == 16 * 4 * 4


def test_every_binary_weight_gets_its_lr_scale():
    model = build_model(mnist_model_cfg(), (1, 28, 28), 10)
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml").optimizer
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    set_lr(opt, 1e-3)
    scales = [g["lr_scale"] for g in opt.param_groups]
    assert scales[:4] == pytest.approx([glorot_lr_scale(784, 4096), glorot_lr_scale(4096, 4096),
                                        glorot_lr_scale(4096, 4096), glorot_lr_scale(4096, 10)])
    assert scales[-1] == 1.0
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * s for s in scales])
    assert sum(len(g["params"]) for g in param_groups(model, True)) == len(list(model.parameters()))


def test_exponential_schedule_reaches_final_lr_after_all_epochs():
    sched = ScheduleConfig(kind="exponential", lr_final=3e-7, step_epochs=None, gamma=0.5)
    assert lr_at(0, 3e-3, sched, 1000) == pytest.approx(3e-3)
    decay = (3e-7 / 3e-3) ** (1 / 1000)
    assert lr_at(10, 3e-3, sched, 1000) == pytest.approx(3e-3 * decay ** 10)
    # cutting the epochs compresses the decay: epoch 20 of 20 is where epoch 1000 of 1000 was
    assert lr_at(20, 3e-3, sched, 20) == pytest.approx(3e-7)


def test_step_schedule_halves():
    sched = ScheduleConfig(kind="step", lr_final=None, step_epochs=20, gamma=0.5)
    assert [lr_at(e, 2 ** -6, sched, 100) for e in (0, 19, 20, 45)] == [2 ** -6, 2 ** -6, 2 ** -7, 2 ** -8]


def test_step_schedule_written_for_a_length_compresses_with_the_run():
    sched = ScheduleConfig(kind="step", lr_final=None, step_epochs=20, gamma=0.5, epochs=200)
    # at its own length: every 20 epochs, as without 'epochs'
    assert [lr_at(e, 1.0, sched, 200) for e in (0, 19, 20, 199)] == [1.0, 1.0, 0.5, 2.0 ** -9]
    # a tenth of the run: every 2 epochs, the same nine halvings by the last epoch
    assert [lr_at(e, 1.0, sched, 20) for e in range(20)] == [2.0 ** -(e // 2) for e in range(20)]
    # a length that does not divide evenly: 7/200 of the run, a halving every 0.7 epochs
    assert [lr_at(e, 1.0, sched, 7) for e in range(7)] == [2.0 ** -int(e / 0.7 + 1e-9) for e in range(7)]
    # twice the run: every 40 epochs
    assert lr_at(39, 1.0, sched, 400) == 1.0 and lr_at(40, 1.0, sched, 400) == 0.5


def test_training_step_keeps_latent_weights_clipped():
    from bnnctl.core.losses import squared_hinge
    torch.manual_seed(0)
    model = build_model(replace(mnist_model_cfg(), hidden=[16]), (1, 4, 4), 3)
    opt = torch.optim.SGD(model.parameters(), lr=100.0)
    loss = squared_hinge(model(torch.randn(8, 1, 4, 4)), torch.randint(0, 3, (8,)))
    loss.backward()
    opt.step()
    clip_weights_(model)
    assert all(m.weight.abs().max() <= 1 for m in model if isinstance(m, BinaryLinear))


def test_squared_hinge_on_pm1_targets():
    from bnnctl.core.losses import squared_hinge
    out = torch.tensor([[0.5, -2.0, 1.5]])
    # targets (-1, -1, +1): max(0, 1 + 0.5)^2, max(0, 1 - 2)^2, max(0, 1 - 1.5)^2
    assert squared_hinge(out, torch.tensor([2])).item() == pytest.approx((2.25 + 0 + 0) / 3)


def test_sign_activation_repr():
    assert "stochastic=True" in repr(SignActivation(True))
