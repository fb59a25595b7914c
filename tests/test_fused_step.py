"""The fused CPU step (fast.fused_step, fast.int8_forward) computes exactly what the plain step does."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from bnnctl import kernels
from bnnctl.train import fused_step
from bnnctl.core.binarize import ap2, binarize_ste, sign_pm1
from bnnctl.core.layers import BinaryLinear, SignActivation
from bnnctl.core.models import build_model
from bnnctl.core.norms import ShiftBatchNorm, ShiftBatchNormFunction
from bnnctl.optim.shift_adamax import ShiftAdaMax
from bnnctl.recipe import ModelConfig
from bnnctl.train.weight_cache import attach_weight_cache
from tests.test_fast_path import sets, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ops():
    return kernels.native_ops()


def hard_values(n: int, seed: int) -> torch.Tensor:
    """Floats over the whole exponent range, subnormals, zeros of both signs, and the AP2 boundaries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-150, 100, (n,), generator=g).float())
    sqrt2 = torch.tensor(math.sqrt(2.0), dtype=torch.float32)
    near = torch.stack([torch.nextafter(sqrt2, torch.tensor(0.0)), sqrt2, torch.nextafter(sqrt2, torch.tensor(2.0))])
    special = torch.cat([near * 2.0 ** -20, near * 2.0 ** 7, torch.tensor([0.0, -0.0, 1e-45, 3e-45, 1.17e-38])])
    return torch.cat([x, special, torch.arange(1, 4096, dtype=torch.int32).view(torch.float32)])


def test_ap2_is_exact_in_torch_and_cpp(ops):
    x = hard_values(200_000, 0)
    x64 = x.double().abs()
    truth = torch.copysign(torch.where(x64 == 0, 0.0, torch.exp2(torch.round(torch.log2(x64)))).float(), x)
    assert torch.equal(ap2(x), truth)
    assert torch.equal(ops.ap2_nonnegative(x.abs()), truth.abs())


def reference_shift_adamax(p, grads, lr_scale, clip, steps_lr):
    opt = ShiftAdaMax([{"params": [p], "lr_scale": lr_scale, "clip": clip}], lr=2.0 ** -6, eps=2.0 ** -27)
    for grad, lr in zip(grads, steps_lr):
        opt.param_groups[0]["lr"] = lr * lr_scale
        p.grad = grad.clone()
        opt.step()
    return p, opt.state[p]


@pytest.mark.parametrize("clip", [None, 1.0])
def test_fused_shift_adamax_equals_shift_adamax_bit_for_bit(clip):
    g = torch.Generator().manual_seed(1)
    init = torch.empty(3000).uniform_(-1, 1, generator=g)
    grads = [hard_values(2000, s)[:3000] if s % 2 else torch.randn(3000, generator=g) * 1e-3 for s in range(6)]
    grads = [torch.cat([gr, torch.zeros(3000 - len(gr))]) for gr in grads]
    lrs = [2.0 ** -6, 2.0 ** -6, 2.0 ** -7, 0.011, 0.003, 0.003]
    p_ref, state_ref = reference_shift_adamax(init.clone(), grads, 3.7, clip, lrs)

    p = init.clone()
    cache = attach_weight_cache(BinaryLinear(1, 1), "int8")  # buffers of the right kind, resized below
    cache.weight, cache.binary, cache.binary_i8 = p, torch.empty_like(p), torch.empty(3000, dtype=torch.int8)
    opt = fused_step.FusedShiftAdaMax([{"params": [p], "lr_scale": 3.7, "clip": None}], lr=2.0 ** -6,
                                      betas=(0.9, 0.999), eps=2.0 ** -27,
                                      layer_of={id(p): (cache, clip)} if clip else {})
    for grad, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr * 3.7
        p.grad = grad.clone()
        opt.step()
    assert torch.equal(p, p_ref)
    assert torch.equal(opt.state[p]["exp_avg"], state_ref["exp_avg"])
    assert torch.equal(opt.state[p]["exp_inf"], state_ref["exp_inf"])
    if clip:
        assert torch.equal(cache.binary, sign_pm1(p)) and torch.equal(cache.binary_i8, sign_pm1(p).to(torch.int8))
        assert cache.version == p._version


def numpy_adam(p, m, v, g, lr, step, beta1=0.9, beta2=0.999, eps=1e-8):
    """torch.optim.Adam's formula in float32 numpy, with numpy's correctly rounded sqrt."""
    f = np.float32
    m = (m.astype(np.float64) + np.float64(f(1 - beta1)) * (g - m).astype(f).astype(np.float64)).astype(f)  # lerp: fma
    v = ((v * f(beta2)).astype(np.float64) + (f(1 - beta2) * g).astype(f).astype(np.float64) * g).astype(f)  # addcmul: fma
    denom = (np.sqrt(v) / f((1 - beta2 ** step) ** 0.5)).astype(f) + f(eps)
    p = p + (f(-(lr / (1 - beta1 ** step))) * m) / denom
    return p.astype(f), m, v


@pytest.mark.parametrize("foreach", [True, False])
def test_fused_adam_is_torch_adam(foreach):
    """Bit for bit the formula with a correctly rounded sqrt; torch's own CPU sqrt is not always
    correctly rounded (on this AVX-512 build about 1 result in 5 is an ulp off), so against
    torch.optim.Adam the two agree to that ulp."""
    g = torch.Generator().manual_seed(2)
    init = [torch.empty(4097).uniform_(-1, 1, generator=g), torch.randn(33, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) * 10.0 ** -k for t in init] for k in range(5)]
    lrs = [3e-3, 3e-3, 1e-3, 2e-4, 1e-5]

    ref = [t.clone() for t in init]
    opt = torch.optim.Adam([{"params": [ref[0]]}, {"params": [ref[1]]}], lr=3e-3, foreach=foreach)
    emulated = [(t.numpy().copy(), np.zeros(t.shape, np.float32), np.zeros(t.shape, np.float32)) for t in init]
    fused = [t.clone() for t in init]
    cache = attach_weight_cache(BinaryLinear(1, 1))
    cache.weight, cache.binary = fused[0], torch.empty_like(fused[0])
    fopt = fused_step.FusedAdam([{"params": [fused[0]]}, {"params": [fused[1]]}], layer_of={id(fused[0]): (cache, 1.0)},
                                lr=3e-3)
    for step, (step_grads, lr) in enumerate(zip(grads, lrs), start=1):
        for optimizer in (opt, fopt):
            for group in optimizer.param_groups:
                group["lr"] = lr
        for t, f, gr in zip(ref, fused, step_grads):
            t.grad, f.grad = gr.clone(), gr.clone()
        opt.step()
        fopt.step()
        ref[0].data.clamp_(-1, 1)
        emulated = [numpy_adam(p, m, v, gr.numpy(), lr, step) for (p, m, v), gr in zip(emulated, step_grads)]
        emulated[0] = (np.clip(emulated[0][0], -1, 1), *emulated[0][1:])
        for t, f, (p, _, _) in zip(ref, fused, emulated):
            assert torch.equal(f, torch.from_numpy(p))
            torch.testing.assert_close(f, t, rtol=1e-6, atol=1e-9)
    assert torch.equal(cache.binary, sign_pm1(fused[0]))
    # the state is Adam's own: a checkpoint moves between the plain and the fused optimizer
    assert opt.state_dict()["state"].keys() == fopt.state_dict()["state"].keys()
    torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg_sq"], fopt.state_dict()["state"][0]["exp_avg_sq"])


def test_integral_inputs_are_found_from_the_structure():
    def mlp(dropout_in, dropout_hidden, **extra):
        cfg = ModelConfig(arch="mlp", hidden=(16, 16), dropout_in=dropout_in, dropout_hidden=dropout_hidden,
                          bias=True, norm="bn", output_norm=None, bn_eps=1e-4, bn_momentum=0.1,
                          stochastic_weights=False, stochastic_activations=False, **extra)
        return build_model(cfg, (1, 4, 4), 10)

    model = mlp(0.0, 0.0)
    linear = [i for i, m in enumerate(model) if isinstance(m, BinaryLinear)]
    assert fused_step.integral_input_scale(model) == {linear[1]: 1.0, linear[2]: 1.0}  # not the pixels
    model = mlp(0.2, 0.5)
    linear = [i for i, m in enumerate(model) if isinstance(m, BinaryLinear)]
    assert fused_step.integral_input_scale(model) == {linear[1]: 2.0, linear[2]: 2.0}
    assert fused_step.integral_input_scale(mlp(0.0, 0.2)) == {}  # 1.25 is no integer
    convnet = build_model(ModelConfig(arch="convnet", conv=(4, "M"), fc=(8,), kernel_size=3, dropout_in=0.0,
                                      dropout_hidden=0.0, bias=True, norm="bn", output_norm=None, bn_eps=1e-4,
                                      bn_momentum=0.1, stochastic_weights=False, stochastic_activations=False),
                          (3, 8, 8), 10)
    fc = [i for i, m in enumerate(convnet) if isinstance(m, BinaryLinear)]
    assert fused_step.integral_input_scale(convnet) == {fc[0]: 1.0, fc[1]: 1.0}  # Flatten keeps the signs


@pytest.mark.parametrize("product, dropout", [("int8", 0.0), ("int8", 0.5), ("xnor", 0.0)])
@pytest.mark.parametrize("in_features", [300, 64, 1])
def test_integer_linear_equals_float_linear(product, dropout, in_features):
    """Forward and backward to the bit, int8 and XNOR, with fan-ins that fill words exactly and leave padding."""
    torch.manual_seed(3)
    float_layer = BinaryLinear(in_features, 70)
    integer_layer = BinaryLinear(in_features, 70)
    integer_layer.load_state_dict(float_layer.state_dict())
    with torch.no_grad():  # biases that are not integers, so that adding them rounds
        float_layer.bias.normal_()
        integer_layer.bias.copy_(float_layer.bias)
    attach_weight_cache(integer_layer, product)
    x = sign_pm1(torch.randn(50, in_features))
    if dropout:
        x = nn.functional.dropout(x, dropout)
    x_float, x_integer = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_float, out_integer = float_layer(x_float), integer_layer(x_integer)
    assert torch.equal(out_float, out_integer)
    grad = torch.randn_like(out_float)
    out_float.backward(grad)
    out_integer.backward(grad)
    assert torch.equal(x_float.grad, x_integer.grad)
    assert torch.equal(float_layer.weight.grad, integer_layer.weight.grad)
    assert torch.equal(float_layer.bias.grad, integer_layer.bias.grad)


@pytest.mark.parametrize("product", ["int8", "xnor"])
def test_a_cache_follows_every_change_of_its_weight(product):
    layer = BinaryLinear(80, 4)
    attach_weight_cache(layer, product)
    x = sign_pm1(torch.randn(3, 80))
    before = layer(x)
    with torch.no_grad():
        layer.weight.neg_()
    assert torch.equal(layer(x), -before + 2 * layer.bias)
    other = BinaryLinear(80, 4)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), other(x))


def test_the_packed_signs_follow_the_fused_optimizer():
    """The fused optimizer writes the signs behind autograd's back; the XNOR product must see the new ones."""
    torch.manual_seed(4)
    layer = BinaryLinear(130, 20)
    cache = attach_weight_cache(layer, "xnor")
    opt = fused_step.FusedShiftAdaMax([{"params": [layer.weight], "lr_scale": 1.0, "clip": None}], lr=0.5,
                                      betas=(0.9, 0.999), eps=2.0 ** -27, layer_of={id(layer.weight): (cache, 1.0)})
    x = sign_pm1(torch.randn(6, 130))
    for _ in range(3):
        layer(x)  # packs the current signs
        layer.weight.grad = torch.randn_like(layer.weight)
        opt.step()
        assert torch.equal(layer(x), x @ sign_pm1(layer.weight).t() + layer.bias)
        assert torch.equal(cache.packed_weight(), kernels.pack(sign_pm1(layer.weight)))


@pytest.mark.parametrize("int8_faster", [True, False])
def test_xnor_for_plus_or_minus_one_inputs_int8_for_other_integers_where_faster(monkeypatch, int8_faster):
    model = nn.Sequential(BinaryLinear(20, 64), SignActivation(), BinaryLinear(64, 64), SignActivation(),
                          nn.Dropout(0.5), BinaryLinear(64, 10))
    times = iter([1.0, 2.0] if int8_faster else [2.0, 1.0])  # int8, then float32, for layer 5 only
    monkeypatch.setattr(fused_step, "_time_ms", lambda fn, repeats=5: next(times))
    expected = {2: "xnor", 5: "int8"} if int8_faster else {2: "xnor"}  # layer 5 sees dropout's 0, +-2
    assert fused_step.choose_integer_products(model, 8) == expected
    assert next(times, None) is None


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the bit: -0.0 is not 0.0, and a NaN equals a NaN of the same bits."""
    integers = {torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(integers), b.view(integers))


def bn_inputs(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, gamma, beta with the awkward cases of shift-based BN where the columns allow them: a column of
    zeros and a constant column (variance 0: 1/sqrt(eps)), tied values, +-0, values a thousand times
    apart, gammas of 0, -0, powers of two and the AP2 rounding boundaries 2^k * sqrt(2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.exp2(torch.randint(-8, 8, (1, cols), generator=g).float())
    sqrt2 = torch.tensor(math.sqrt(2.0))
    specials = [torch.zeros(rows), torch.full((rows,), 3.25), torch.tensor([1.0, -1.0]).repeat(rows)[:rows],
                torch.tensor([0.0, -0.0]).repeat(rows)[:rows], torch.randn(rows, generator=g) * 1e3]
    for j, column in enumerate(specials[:cols]):
        x[:, j] = column
    gamma = torch.randn(cols, generator=g)
    gamma_specials = torch.stack([torch.tensor(0.0), torch.tensor(-0.0), torch.tensor(0.5), sqrt2,
                                  torch.nextafter(sqrt2, torch.tensor(0.0)), -2.0 * sqrt2])
    gamma[:min(cols, len(gamma_specials))] = gamma_specials[:cols]
    return x, gamma, torch.randn(cols, generator=g)


def run_shift_bn(function, x, gamma, beta, grad, eps=1e-5):
    """(out, mean, inv_std, grad_x, grad_gamma, grad_beta) of one training-mode shift BN."""
    leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
    out, mean, inv_std = function(*leaves, eps)
    out.backward(grad)
    return (out.detach(), mean, inv_std, *(t.grad for t in leaves))


@pytest.mark.parametrize("rows,cols", [(100, 2048), (7, 33), (1, 5), (64, 19), (3, 1)])
def test_fused_shift_bn_equals_python_shift_bn_bit_for_bit(rows, cols):
    """Forward and backward give the Python layer's bits: the C++ passes round every product and
    difference as the torch ops do, and the column sums are torch's own (at::mean / at::sum)."""
    x, gamma, beta = bn_inputs(rows, cols, seed=rows + cols)
    grad = torch.randn(rows, cols, generator=torch.Generator().manual_seed(cols))
    grad[:, -1] = 0.0
    python = run_shift_bn(ShiftBatchNormFunction.apply, x, gamma, beta, grad)
    fused = run_shift_bn(fused_step.fused_shift_batch_norm, x, gamma, beta, grad)
    assert fused[0].grad_fn is None and python[0].grad_fn is None  # compared detached
    for name, a, b in zip(["out", "mean", "inv_std", "grad_x", "grad_gamma", "grad_beta"], python, fused):
        assert same_bits(a, b), name


def test_fused_shift_bn_module_keeps_the_same_running_statistics():
    x, gamma, beta = bn_inputs(32, 12, seed=4)
    python, fused = ShiftBatchNorm(12), ShiftBatchNorm(12)
    for module in (python, fused):
        with torch.no_grad():
            module.weight.copy_(gamma)
            module.bias.copy_(beta)
    fused_step.use_fused_layers(nn.Sequential(fused))
    assert fused.training_function is fused_step.fused_shift_batch_norm
    assert python.training_function is not fused_step.fused_shift_batch_norm  # set on the instance only
    for step in range(3):
        assert torch.equal(python(x * (step + 1)), fused(x * (step + 1)))
    assert torch.equal(python.running_mean, fused.running_mean)
    assert torch.equal(python.running_inv_std, fused.running_inv_std)
    python.eval(), fused.eval()
    assert torch.equal(python(x), fused(x))


def test_fused_shift_bn_leaves_other_inputs_to_the_python_layer():
    """4-D and float64 inputs are not what the C++ passes take; they go through ShiftBatchNormFunction."""
    for x in (torch.randn(4, 3, 5, 5), torch.randn(6, 3, dtype=torch.float64)):
        gamma, beta = torch.randn(3), torch.randn(3)
        grad = torch.randn_like(x)
        python = run_shift_bn(ShiftBatchNormFunction.apply, x, gamma, beta, grad)
        fused = run_shift_bn(fused_step.fused_shift_batch_norm, x, gamma, beta, grad)
        for a, b in zip(python, fused):
            assert same_bits(a, b)


def activation_inputs(seed: int) -> torch.Tensor:
    """Pre-activations around the STE's edges (+-1, the next floats past them), zeros of both signs,
    infinities, NaN, and x whose hard_sigmoid is a small dyadic number that a uniform draw can equal."""
    g = torch.Generator().manual_seed(seed)
    one = torch.tensor(1.0)
    edges = torch.stack([one, -one, torch.nextafter(one, torch.tensor(2.0)), torch.nextafter(-one, torch.tensor(-2.0)),
                         torch.tensor(0.0), torch.tensor(-0.0), torch.tensor(math.inf), torch.tensor(-math.inf),
                         torch.tensor(math.nan), torch.tensor(-0.5), torch.tensor(2.0 ** -24 - 1)])
    return torch.cat([torch.randn(3000, generator=g) * 1.5, edges, torch.arange(-64, 65) / 64.0]).view(-1, 4)


@pytest.mark.parametrize("stochastic", [True, False])
def test_fused_sign_activation_equals_binarize_ste_bit_for_bit(stochastic):
    """The same +1/-1 from the same generator state (and the generator left in the same state), and the
    same masked gradient."""
    x = activation_inputs(0)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    grad[0, :2] = torch.tensor([math.inf, -3.0])
    results = []
    for function in (binarize_ste, fused_step.fused_binarize_ste):
        torch.manual_seed(11)
        leaf = x.clone().requires_grad_()
        out = function(leaf, stochastic)
        out.backward(grad)
        results.append((out.detach(), leaf.grad, torch.rand(3)))
    (out_a, grad_a, next_a), (out_b, grad_b, next_b) = results
    assert same_bits(out_a, out_b)
    assert same_bits(grad_a, grad_b)  # inf * 0 is NaN in both, -g * 0 is -0.0
    assert torch.equal(next_a, next_b)  # both drew exactly x.numel() uniforms
    if stochastic:
        assert 0 < int((out_a[:750] > 0).sum()) < 3000  # it did draw


def test_fused_layers_are_switched_on_by_the_fused_step_only():
    cfg = ModelConfig(arch="mlp", hidden=(16,), dropout_in=0.0, dropout_hidden=0.0, bias=True,
                      norm="shift_bn", output_norm="torch7_bn", bn_eps=1e-5, bn_momentum=0.125,
                      stochastic_weights=False, stochastic_activations=True)
    plain, fused = build_model(cfg, (1, 4, 4), 10), build_model(cfg, (1, 4, 4), 10)
    fused_step.setup_fused_step(fused, ShiftAdaMax(fused.parameters(), lr=2.0 ** -6), False, 8)
    for module in plain.modules():
        if isinstance(module, SignActivation):
            assert module.binarize is binarize_ste
    (activation,) = [m for m in fused.modules() if isinstance(m, SignActivation)]
    (norm,) = [m for m in fused.modules() if isinstance(m, ShiftBatchNorm)]
    assert activation.binarize is fused_step.fused_binarize_ste
    assert norm.training_function is fused_step.fused_shift_batch_norm


def tiny_torch7(tmp_path: Path, tiny_npz: Path) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "mnist_torch7.yaml").read_text())
    recipe["name"] = "tiny7"
    recipe["data"].update(source="npz", npz=str(tiny_npz), valid_size=100)
    recipe["model"]["hidden"] = [600, 600]  # a fan-in of 600: past the BLAS's K blocking, where addmm rounds
    recipe["train"].update(epochs=3, batch_size=50, eval_batch_size=100)
    path = tmp_path / "tiny7.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


PLAIN_CPU = ["fast.fused_step=false", "fast.int8_forward=false", "fast.reuse_memory=false",
             "fast.fused_optimizer=false"]
FUSED_CPU = ["fast.fused_step=true", "fast.int8_forward=true", "fast.reuse_memory=true"]


def assert_identical_runs(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_text().split("epoch_time_s")[0] == (b / "metrics.csv").read_text().split("epoch_time_s")[0]
    rows_a = [r.rsplit(",", 1)[0] for r in (a / "metrics.csv").read_text().splitlines()]
    rows_b = [r.rsplit(",", 1)[0] for r in (b / "metrics.csv").read_text().splitlines()]
    assert rows_a == rows_b  # every column but the epoch time
    state_a = torch.load(a / "checkpoint.pt", weights_only=False)
    state_b = torch.load(b / "checkpoint.pt", weights_only=False)
    for key, value in state_a["model"].items():
        assert torch.equal(value, state_b["model"][key]), key
    for index, state in state_a["optimizer"]["state"].items():
        for name, value in state.items():
            other = state_b["optimizer"]["state"][index][name]
            assert (torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other), (index, name)


def force_integer_products(monkeypatch, product: str = "int8"):
    """Every integral-input layer multiplies in integers by ``product`` (on a CPU where it is slower it
    would not be chosen); "xnor" where the input is +-1, int8 otherwise."""
    def everywhere(model, batch):
        return {i: product if bound == 1.0 else "int8" for i, bound in fused_step.integral_input_scale(model).items()}
    monkeypatch.setattr(fused_step, "choose_integer_products", everywhere)


@pytest.mark.parametrize("product", ["int8", "xnor"])
def test_fused_torch7_training_equals_plain_training_bit_for_bit(tiny_npz, tmp_path, monkeypatch, product):
    """Shift AdaMax has no sqrt: two epochs give the same losses, errors, weights, BN statistics and
    optimizer state, to the bit, on any CPU."""
    force_integer_products(monkeypatch, product)
    path = tiny_torch7(tmp_path, tiny_npz)
    plain = train(path, tmp_path / "plain", *sets(PLAIN_CPU))
    fused = train(path, tmp_path / "fused", *sets(FUSED_CPU))
    assert "fused_step: true" in (fused / "recipe.yaml").read_text()
    assert_identical_runs(plain, fused)


def test_fused_adam_training_step_equals_plain_step(tiny_recipe, tmp_path, monkeypatch):
    """One step of the Theano recipe (dropout 0.5 before the int8 layers): the same forward and
    gradients to the bit, and the same update to torch's sqrt ulp (see test_fused_adam_is_torch_adam)."""
    from rich.console import Console

    from bnnctl.data import load_splits
    from bnnctl.recipe import load_recipe
    from bnnctl.train.loop import Trainer

    force_integer_products(monkeypatch)
    trainers = []
    for overrides in (PLAIN_CPU, FUSED_CPU):
        cfg = load_recipe(tiny_recipe, overrides + ["model.dropout_hidden=0.5"])
        splits = load_splits(cfg.data, None)
        trainers.append(Trainer(cfg, splits, torch.device("cpu"), tmp_path, Console(quiet=True), "test"))
    plain, fused = trainers
    assert fused.step.integer_products and isinstance(fused.optimizer, fused_step.FusedAdam)
    idx = plain.batches()[0]
    for trainer in trainers:
        torch.manual_seed(5)  # the same dropout masks
        trainer.model.train()
        xb = trainer.inputs(trainer.splits.x_train[idx])
        loss = trainer.step.forward_loss(xb, trainer.splits.y_train[idx])
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.loss = loss.detach()
    assert torch.equal(plain.loss, fused.loss)
    for p, f in zip(plain.model.parameters(), fused.model.parameters()):
        assert torch.equal(p.grad, f.grad)
    for trainer in trainers:
        trainer.optimizer.step()
        trainer.step.clip_()
    for p, f in zip(plain.model.parameters(), fused.model.parameters()):
        torch.testing.assert_close(p, f, rtol=1e-6, atol=1e-9)


def test_fused_step_is_what_fast_means_on_the_cpu(tiny_recipe, tmp_path):
    run = train(tiny_recipe, tmp_path / "fast", "--fast")
    recorded = yaml.safe_load((run / "recipe.yaml").read_text())["fast"]
    assert recorded["fused_step"] and recorded["int8_forward"] and recorded["reuse_memory"]
