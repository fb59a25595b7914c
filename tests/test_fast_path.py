"""The fast.* switches change how a step runs, never what it computes (CPU, to tolerance)."""
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.data import scale_to_pm1
from bnnctl.data.preprocessing import Standardize
from bnnctl.train.fast import fused_adam, pretransformed
from bnnctl.train.loop import Trainer

runner = CliRunner()
# Every comparison drops the binary layers' biases. Each feeds a BN, which subtracts any shift, so
# its gradient is zero up to rounding, and Adam (which divides by the gradient's scale) moves it
# by amplified rounding noise: two bit-different but equally correct steps then drift apart
# through it, and a sign near zero flips. Without it, a fast step equals the plain one to ~1e-7.
NO_BIAS = ["model.bias=false"]
PLAIN = NO_BIAS + ["fast.data_on_device=false", "fast.foreach_clip=false", "fast.fused_optimizer=false",
                   "fast.fused_step=false", "fast.int8_forward=false", "fast.reuse_memory=false",
                   "fast.pretransform=false", "fast.compile=false", "fast.channels_last=false"]
TINY_CONVNET = ["model.arch=convnet", "model.conv=[4,M,8,M]", "model.fc=[16]"]


def train(recipe: Path, runs: Path, *args: str) -> Path:
    result = runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs), "--device", "cpu",
                                 "--set", "train.epochs=2", *args])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in runs.glob("*/*") if p.is_dir()]
    return run


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def assert_same_run(a: Path, b: Path) -> None:
    """Same per-epoch losses and errors, and the same weights and BN statistics at the end."""
    rows_a = (a / "metrics.csv").read_text().splitlines()
    rows_b = (b / "metrics.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 3
    for row_a, row_b in zip(rows_a[1:], rows_b[1:]):
        values_a, values_b = np.array(row_a.split(",")[:6], float), np.array(row_b.split(",")[:6], float)
        np.testing.assert_allclose(values_a, values_b, rtol=1e-5, atol=1e-7)  # epoch, lr, losses, errors
    state_a = torch.load(a / "checkpoint.pt", weights_only=False)["model"]
    state_b = torch.load(b / "checkpoint.pt", weights_only=False)["model"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], atol=1e-5, rtol=1e-5, msg=key)


def test_fast_mlp_step_equals_plain(tiny_recipe, tmp_path):
    """Dataset on the device, preprocessing once, torch's fused Adam, foreach clipping vs the plain loop.

    (The CPU preset's fused step is tested in test_fused_step.py.)"""
    plain = train(tiny_recipe, tmp_path / "plain", *sets(PLAIN))
    fast = train(tiny_recipe, tmp_path / "fast", "--fast", *sets(NO_BIAS + [
        "fast.pretransform=true", "fast.foreach_clip=true", "fast.fused_step=false", "fast.int8_forward=false",
        "fast.fused_optimizer=true"]))
    recorded = (fast / "recipe.yaml").read_text()
    assert "fused_optimizer: true" in recorded and "pretransform: true" in recorded
    assert_same_run(plain, fast)


def test_channels_last_convnet_step_equals_plain(tiny_recipe, tmp_path):
    """One step: the same loss, and the same gradients to rounding after the last max-pool.

    Only one step: NHWC convolutions sum in another order (how differently depends on the CPU's
    kernels), and over epochs a BNN's signs turn any rounding difference into different weights.
    Before a max-pool the gradients may differ legitimately: a conv over +-1 inputs gives integer
    sums, so a pooling window often holds tied maxima, and the NCHW and NHWC pooling kernels each
    route the gradient to the tie they meet first.
    """
    from rich.console import Console

    from bnnctl.data import load_splits
    from bnnctl.recipe import load_recipe

    trainers = []
    for extra in ([], ["fast.channels_last=true"]):
        cfg = load_recipe(tiny_recipe, PLAIN + TINY_CONVNET + extra)
        trainers.append(Trainer(cfg, load_splits(cfg.data, None), torch.device("cpu"), tmp_path,
                                Console(quiet=True), "test"))
    plain, nhwc = trainers
    assert nhwc.step.channels_last and not plain.step.channels_last
    idx = plain.batches()[0]
    losses = []
    for trainer in trainers:
        torch.manual_seed(7)  # the same dropout masks
        trainer.model.train()
        xb = trainer.inputs(trainer.splits.x_train[idx])
        loss = trainer.step.forward_loss(xb, trainer.splits.y_train[idx])
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(loss.detach())
    assert nhwc.inputs(nhwc.splits.x_train[idx]).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    last_pool = max(i for i, m in enumerate(plain.model) if isinstance(m, torch.nn.MaxPool2d))
    after_pools = [(name, p) for name, p in plain.model.named_parameters() if int(name.split(".")[0]) > last_pool]
    assert len(after_pools) >= 4
    nhwc_params = dict(nhwc.model.named_parameters())
    for name, p in after_pools:
        q = nhwc_params[name]
        torch.testing.assert_close(p.grad, q.grad.contiguous(), rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_compiled_model_step_equals_plain(tiny_recipe, tmp_path, monkeypatch):
    """torch.compile's graph capture of the binary layers (STE, BN buffer updates) keeps the step.

    Inductor's code generation takes a minute on this CPU, so the graphs run on the aot_eager
    backend: the same Dynamo capture and AOT autograd split, executed by eager kernels.
    """
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    plain = train(tiny_recipe, tmp_path / "plain", *sets(PLAIN))
    compiled = train(tiny_recipe, tmp_path / "compiled", *sets(PLAIN + ["fast.compile=true"]))
    torch._dynamo.reset()
    assert_same_run(plain, compiled)


def test_compiled_sign_maps_negative_zero_to_plus_one():
    """Inductor folds away an x + 0.0, so compiled code must not rely on it to turn -0.0 into +0.0."""
    from bnnctl.core.binarize import sign_pm1

    torch._dynamo.reset()
    values = torch.tensor([-2.0, -0.5, -0.0, 0.0, 1e-30, 0.5, 2.0])
    assert torch.compile(sign_pm1, dynamic=False)(values).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_train_step_never_reads_the_device(tiny_recipe, tmp_path, monkeypatch):
    """No .item(), float(), bool() or copy to the host inside a step: the device never waits on Python."""
    original = Trainer.train_step

    def refuse(*_, **__):
        raise AssertionError("the training step read a tensor on the host")

    def guarded_step(self, idx):
        with pytest.MonkeyPatch.context() as guard:
            for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__"):
                guard.setattr(torch.Tensor, name, refuse)
            return original(self, idx)

    monkeypatch.setattr(Trainer, "train_step", guarded_step)
    train(tiny_recipe, tmp_path / "runs", "--fast", "--set", "train.epochs=1")


def test_pretransformed_inputs_equal_per_batch_inputs(tiny_recipe):
    from bnnctl.data import load_splits
    from bnnctl.recipe import load_recipe

    splits = load_splits(load_recipe(tiny_recipe).data)
    for transform in (scale_to_pm1, Standardize(0.3, 0.4)):
        splits.transform = transform
        once = pretransformed(splits, chunk=64)
        assert once.x_train.dtype == torch.float32 and once.transform(once.x_test) is once.x_test
        for name in ("train", "valid", "test"):
            x, _ = splits.split(name)
            torch.testing.assert_close(once.split(name)[0][37:151], transform(x[37:151]), rtol=0, atol=0)


def test_fused_adam_keeps_groups_and_step():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    groups = lambda ps: [{"params": [ps[0]], "lr_scale": 4.0, "lr": 0.4},  # noqa: E731
                         {"params": [ps[1]], "lr_scale": 1.0}]
    plain = torch.optim.Adam(groups(params), lr=0.1, betas=(0.8, 0.9), eps=1e-6, foreach=True)
    fused = fused_adam(torch.optim.Adam(groups(twins), lr=0.1, betas=(0.8, 0.9), eps=1e-6, foreach=True))
    assert fused.defaults["fused"] and not fused.defaults["foreach"]
    assert [g["lr"] for g in fused.param_groups] == [0.4, 0.1]
    assert [g["lr_scale"] for g in fused.param_groups] == [4.0, 1.0]
    assert fused.param_groups[0]["betas"] == (0.8, 0.9) and fused.param_groups[0]["eps"] == 1e-6
    for _ in range(3):
        for ps, opt in ((params, plain), (twins, fused)):
            for p in ps:
                p.grad = torch.sin(p.detach() * 3)
            opt.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q)
    assert fused_adam(fused) is fused


def test_fast_preset_yields_to_set(tiny_recipe, tmp_path):
    run = train(tiny_recipe, tmp_path / "runs", "--fast", "--set", "fast.int8_forward=false",
                "--set", "train.epochs=1")
    recorded = (run / "recipe.yaml").read_text()
    assert "int8_forward: false" in recorded and "fused_step: true" in recorded and "data_on_device: true" in recorded
    assert json.loads((run / "result.json").read_text())["world_size"] == 1


def test_cuda_graph_compile_modes_are_refused_on_cuda(tiny_recipe, tmp_path):
    from rich.console import Console

    from bnnctl.data import load_splits
    from bnnctl.errors import UserError
    from bnnctl.recipe import load_recipe

    cfg = load_recipe(tiny_recipe, ["fast.compile=true", "fast.compile_mode=reduce-overhead"])
    with pytest.raises(UserError, match="not yet shown to train the same model"):
        Trainer(cfg, load_splits(cfg.data), torch.device("cuda"), tmp_path, Console(quiet=True), "test")


def test_resume_refuses_fast(tiny_recipe, tmp_path):
    run = train(tiny_recipe, tmp_path / "runs", "--set", "train.epochs=1")
    result = runner.invoke(app, ["train", str(tiny_recipe), "--resume", str(run), "--fast"])
    assert result.exit_code == 2 and "drop --set, --seed and --fast" in result.output


# ---------------------------------------------------------------------------- CUDA only

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_train_step_never_synchronizes(tiny_recipe, tmp_path):
    """torch's sync debug mode turns any device-to-host wait inside the steps into an error."""
    from rich.console import Console

    from bnnctl.data import load_splits
    from bnnctl.recipe import load_recipe
    from bnnctl.recipe import FAST_PRESETS

    cfg = load_recipe(tiny_recipe, FAST_PRESETS["cuda"])
    device = torch.device("cuda")
    splits = pretransformed(load_splits(cfg.data).to(device), 100)
    precision = torch.get_float32_matmul_precision()  # fast.tf32 sets it for the process
    trainer = Trainer(cfg, splits, device, tmp_path, Console(quiet=True), "test")
    batches = trainer.batches()
    trainer.train_step(batches[0])  # optimizer state is created here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for idx in batches[1:]:
            trainer.train_step(idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.set_float32_matmul_precision(precision)


@cuda
def test_cuda_tf32_keeps_binary_products_exact():
    """+1/-1 inputs and weights: TF32 tensor cores return the exact integer sums of fp32."""
    from bnnctl.core.binarize import sign_pm1

    torch.manual_seed(0)
    a = sign_pm1(torch.randn(100, 4096, device="cuda"))
    w = sign_pm1(torch.randn(4096, 4096, device="cuda"))
    exact = (a.double() @ w.double().T).float()
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert torch.equal(a @ w.T, exact)
    finally:
        torch.set_float32_matmul_precision(previous)


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    from bnnctl.core.models import build_model
    from bnnctl.recipe import load_recipe

    cfg = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "mnist.yaml",
                      ["model.hidden=[256,256]", "model.dropout_in=0", "model.dropout_hidden=0", "model.bias=false"])
    torch.manual_seed(seed)
    return build_model(cfg.model, (1, 8, 8), 10)


@cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_training_equals_eager(mode):
    """The trainer's step (model and loss compiled as one function, fused Adam, per-layer clamp), eager vs compiled.

    On the H200, MNIST training compiled with reduce-overhead did not learn (88% test error); this
    says whether a mode computes the eager steps, without dropout, whose compiled masks differ.
    """
    import copy

    from bnnctl.core.layers import binary_layers
    from bnnctl.optim import build_optimizer
    from bnnctl.recipe import load_recipe
    from bnnctl.core.losses import squared_hinge

    optimizer_cfg = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "mnist.yaml").optimizer
    device = torch.device("cuda")
    eager = tiny_mlp().to(device)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(lambda x, y: squared_hinge(twin(x).float(), y), mode=mode, dynamic=False)
    runs = [(eager, lambda x, y: squared_hinge(eager(x).float(), y)), (twin, compiled)]
    optimizers = [build_optimizer(model, optimizer_cfg, device) for model, _ in runs]
    generator = torch.Generator(device="cuda").manual_seed(1)
    for step in range(6):
        x = torch.rand(50, 1, 8, 8, device=device, generator=generator) * 2 - 1
        y = torch.randint(0, 10, (50,), device=device, generator=generator)
        losses = []
        for (model, forward_loss), optimizer in zip(runs, optimizers):
            torch.compiler.cudagraph_mark_step_begin()
            loss = forward_loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for layer in binary_layers(model):
                layer.clip_()
            losses.append(loss.item())
        # Loose enough for a sign flipped by rounding, far tighter than a step that does not learn.
        assert losses[1] == pytest.approx(losses[0], rel=1e-3), f"step {step}"
    for (key, a), b in zip(eager.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3, msg=key)
    eager.eval(), twin.eval()
    x = torch.rand(200, 1, 8, 8, device=device, generator=generator) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(twin, mode=mode, dynamic=False)(x), eager(x), atol=1e-3, rtol=1e-3)


@cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_dropout_keeps_its_rate(mode):
    """Compiled dropout drops half of a p=0.5 layer's inputs, with a new mask at every step."""
    dropout = torch.nn.Dropout(0.5).train()
    drop = torch.compile(lambda x: dropout(x), mode=mode, dynamic=False)
    ones = torch.ones(256, 1024, device="cuda")
    kept = []
    for _ in range(4):
        torch.compiler.cudagraph_mark_step_begin()
        kept.append((drop(ones) != 0).float().clone())
    for mask in kept:
        assert 0.48 < mask.mean().item() < 0.52
    assert not torch.equal(kept[-1], kept[-2])
