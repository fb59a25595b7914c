"""Shift-based BN (Algorithm 3) and AdaMax (Algorithm 4), against the Torch7 definitions in numpy."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnctl.core.binarize import ap2
from bnnctl.core.models import build_model
from bnnctl.optim import build_optimizer, param_groups
from bnnctl.recipe import load_recipe
from bnnctl.core.binarize import pow2_round
from bnnctl.core.norms import NORM_WEIGHT, PARAM_ROLE, ShiftBatchNorm
from bnnctl.optim.shift_adamax import ShiftAdaMax, make_shift_adamax

REPO = Path(__file__).resolve().parent.parent


def np_ap2(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(x == 0, 0.0, np.sign(x) * 2.0 ** np.round(np.log2(np.abs(x))))


# ---------------------------------------------------------------------------- AP2

def test_ap2_rounds_to_the_nearest_power_of_two_in_log_scale():
    x = torch.tensor([3.0, 0.3, -5.0, 0.0, 1.4, 1.5, -0.75, 1024.0, 2.0 ** -20])
    expected = [4.0, 0.25, -4.0, 0.0, 1.0, 2.0, -1.0, 1024.0, 2.0 ** -20]
    assert ap2(x).tolist() == expected


def test_ap2_matches_numpy_and_stays_within_half_an_octave():
    x = torch.randn(10000, dtype=torch.float64) * 10
    y = ap2(x)
    assert np.array_equal(y.numpy(), np_ap2(x.numpy()))
    ratio = (y / x).numpy()
    assert ratio.min() >= 2 ** -0.5 - 1e-12 and ratio.max() <= 2 ** 0.5 + 1e-12
    assert np.allclose(np.log2(np.abs(y.numpy())), np.round(np.log2(np.abs(y.numpy()))))


def test_pow2_round_of_numbers():
    assert pow2_round(0.015625) == 0.015625
    assert pow2_round(0.1) == 0.125 and pow2_round(37.0) == 32.0 and pow2_round(47.0) == 64.0


# ---------------------------------------------------------------------------- shift-based BN

def torch7_shift_bn_forward(x, gamma, beta, eps):
    """Torch7's BatchNormalizationShiftPow2 / Spatial...ShiftPow2 training forward, in numpy."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    c = x - mean.reshape(shape)
    var = (np_ap2(c) * c).mean(axis=axes)
    inv_std = 1 / np.sqrt(var + eps)
    s = np_ap2(inv_std)
    out = np_ap2(gamma).reshape(shape) * (c * s.reshape(shape)) + beta.reshape(shape)
    return out, mean, inv_std


def torch7_shift_bn_backward(x, gamma, g, eps):
    """Torch7's updateGradInput and accGradParameters of the shift-based BN, in numpy."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    c = x - x.mean(axis=axes).reshape(shape)
    c2 = np_ap2(c)
    s = np_ap2(1 / np.sqrt((c2 * c).mean(axis=axes) + eps)).reshape(shape)
    grad_in = -(c2 * g).mean(axis=axes).reshape(shape) * c2 * s * s
    grad_in = (grad_in + g - g.mean(axis=axes).reshape(shape)) * s * np_ap2(gamma).reshape(shape)
    grad_gamma = (np_ap2(c * s) * g).sum(axis=axes)
    grad_beta = g.sum(axis=axes)
    return grad_in, grad_gamma, grad_beta


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 6)])
def test_shift_bn_training_forward_and_backward_match_torch7(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 3.0, shape)
    gamma = rng.uniform(-2, 2, shape[1])
    beta = rng.normal(0, 1, shape[1])
    g = rng.normal(0, 1, shape)
    bn = ShiftBatchNorm(shape[1], eps=1e-5, momentum=0.125).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    xt = torch.from_numpy(x).requires_grad_(True)
    out = bn(xt)
    expected, mean, inv_std = torch7_shift_bn_forward(x, gamma, beta, 1e-5)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    out.backward(torch.from_numpy(g))
    grad_in, grad_gamma, grad_beta = torch7_shift_bn_backward(x, gamma, g, 1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), grad_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.weight.grad.numpy(), grad_gamma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.bias.grad.numpy(), grad_beta, rtol=1e-6, atol=1e-6)
    # running averages of the mean and of 1/std (before AP2), momentum 0.125 from 0 and 1
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.125 * mean, rtol=1e-6)
    np.testing.assert_allclose(bn.running_inv_std.numpy(), 0.875 + 0.125 * inv_std, rtol=1e-6)


def test_shift_bn_normalizes_like_exact_bn_up_to_the_power_of_two_rounding():
    x = torch.randn(256, 8) * 5 + 3
    out = ShiftBatchNorm(8)(x)
    exact = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    ratio = out.std(0) / exact.std(0)
    # AP2 of 1/std moves the scale by at most half an octave (and AP2(c) perturbs var a little)
    assert (ratio > 2 ** -0.6).all() and (ratio < 2 ** 0.6).all()
    assert out.mean(0).abs().max() < 1e-4


def test_shift_bn_evaluation_uses_running_statistics_and_powers_of_two():
    bn = ShiftBatchNorm(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_inv_std.copy_(torch.tensor([0.3, 3.0, 1.0]))
        bn.weight.copy_(torch.tensor([1.2, -0.7, 0.2]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -1.0]))
    bn.eval()
    x = torch.randn(5, 3)
    expected = (x - bn.running_mean) * torch.tensor([0.25, 4.0, 1.0]) * torch.tensor([1.0, -0.5, 0.25]) + bn.bias
    assert torch.allclose(bn(x), expected.detach())


def test_shift_bn_keeps_float32_statistics_for_bf16_inputs():
    x = (torch.randn(32, 4) * 3).bfloat16().requires_grad_(True)
    out = ShiftBatchNorm(4)(x)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- shift-based AdaMax

def torch7_adamax(x, grads, lr, glr, beta1=0.9, beta2=0.999, eps=2.0 ** -27, clip=None):
    """adaMax_binary_clip_shift.lua, step by step, in numpy."""
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = np.maximum(beta2 * v, np.abs(g))
        step = 2.0 ** np.round(np.log2(lr / (1 - beta1 ** t)))
        v = np_ap2(v) + eps
        x = x - step * glr * m / v
        if clip is not None:
            x = np.clip(x, -clip, clip)
    return x, m, v


@pytest.mark.parametrize("glr,clip", [(1.0, None), (36.95, None), (8.0, 1.0)])
def test_shift_adamax_matches_torch7(glr, clip):
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, 50)
    grads = [rng.normal(0, 10.0 ** rng.integers(-3, 1), 50) for _ in range(12)]
    grads[3][:10] = 0.0  # zero gradients: v falls to eps and the step to 0
    p = torch.nn.Parameter(torch.from_numpy(x0.copy()))
    opt = ShiftAdaMax([{"params": [p], "lr_scale": glr, "clip": clip}], lr=2.0 ** -6)
    for g in grads:
        opt.param_groups[0]["lr"] = 2.0 ** -6 * glr  # as optim.set_lr sets it
        p.grad = torch.from_numpy(g)
        opt.step()
    expected, m, v = torch7_adamax(x0, grads, 2.0 ** -6, glr, clip=clip)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(opt.state[p]["exp_inf"].numpy(), v, rtol=1e-12)


def test_shift_adamax_step_sizes_are_powers_of_two_times_the_layer_scale():
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = ShiftAdaMax([{"params": [p], "lr_scale": 3.0}], lr=0.01)
    opt.param_groups[0]["lr"] = 0.03
    for t in range(1, 30):
        before = p.detach().clone()
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        # with a constant gradient m / v = 1 - 0.9^t (minus eps), so the step is AP2(lr / (1 - 0.9^t)) * 3
        step = float(before - p.detach()) / (1 - 0.9 ** t) * (1 + 2 ** -27 / 1.0)
        assert math.isclose(step / 3.0, 2.0 ** round(math.log2(step / 3.0)), rel_tol=1e-6)


def _tiny_torch7_cfg(**optimizer):
    return load_recipe(REPO / "recipes" / "mnist_torch7.yaml",
                       ["model.hidden=[16, 8]", *(f"optimizer.{key}={value}" for key, value in optimizer.items())])


def test_torch7_models_use_shift_bn_inside_and_exact_bn_at_the_output():
    recipe = _tiny_torch7_cfg()
    model = build_model(recipe.model, (1, 4, 4), 10)
    norms = [m for m in model if isinstance(m, (ShiftBatchNorm, torch.nn.BatchNorm1d))]
    assert [type(m) for m in norms] == [ShiftBatchNorm, ShiftBatchNorm, torch.nn.BatchNorm1d]
    assert all(getattr(m.weight, PARAM_ROLE) == NORM_WEIGHT for m in norms)


def test_factory_gives_bn_gammas_their_torch7_mnist_learning_rate():
    recipe = _tiny_torch7_cfg(norm_lr_scale=True, lr_scale_pow2=False)
    model = build_model(recipe.model, (1, 4, 4), 10)
    opt = build_optimizer(model, recipe.optimizer, torch.device("cpu"))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for bn, features in ((model[2], 16), (model[5], 8), (model[8], 10)):
        group = by_param[id(bn.weight)]
        assert group["lr_scale"] == pytest.approx(1 / math.sqrt(1.5 / features))
        assert group["lr"] == pytest.approx(2.0 ** -6 / math.sqrt(1.5 / features))
        assert by_param[id(bn.bias)]["lr_scale"] == 1.0
    first = model[1]
    assert by_param[id(first.weight)]["lr_scale"] == pytest.approx(1 / math.sqrt(1.5 / (16 + 16)))
    assert all(g["clip"] is None for g in opt.param_groups)


def test_factory_rounds_layer_scales_and_clips_everything_for_torch7_cifar10():
    recipe = _tiny_torch7_cfg(norm_lr_scale=False, lr_scale_pow2=True, clip_all=True)
    model = build_model(recipe.model, (1, 4, 4), 10)
    groups = param_groups(model, True)
    opt = make_shift_adamax(groups, recipe.optimizer, torch.device("cpu"))
    # Glorot scales 4.62, 4.0 and 3.46 of the 16-16, 16-8 and 8-10 layers all round to 4
    assert sorted({g["lr_scale"] for g in opt.param_groups}) == [1.0, 4.0]
    assert len(opt.param_groups) == len(groups)
    assert all(g["clip"] == 1.0 for g in opt.param_groups)
    for p in model.parameters():
        p.grad = torch.full_like(p, -1.0)
        with torch.no_grad():
            p.fill_(0.999)
    opt.param_groups[0]["lr"] = 10.0
    opt.step()
    assert all(float(p.detach().max()) <= 1.0 for p in model.parameters())
