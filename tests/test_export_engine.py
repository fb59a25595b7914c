"""Export and the bit-packed engine, held to the float model they come from, unit by unit.

Tiny models of each architecture are trained for a few steps, then their norms get statistics that
exercise every case of the folding: negative scales (the threshold flips), zero scales (constant
units), zero variances (huge scales), and units whose observed pre-activations sit exactly on the
threshold (BN output exactly 0, where sign gives +1).
"""
from __future__ import annotations

import json
import shlex
import struct
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from bnnctl import kernels
from bnnctl.core.binarize import sign_pm1
from bnnctl.cli import app
from bnnctl.data import scale_to_pm1
from bnnctl.infer.engine import EngineError, PackedEngine, engine_error
from bnnctl.infer.bnnx import EXPORT_VERSION, MAGIC, load_export, save_export
from bnnctl.infer.exported import ExportError
from bnnctl.infer.fold import export_model, fires, fold_thresholds
from bnnctl.core.layers import BinaryConv2d, BinaryLinear, SignActivation, clip_weights_
from bnnctl.core.models import build_model
from bnnctl.recipe import load_recipe
from bnnctl.core.norms import ShiftBatchNorm
from bnnctl.core.losses import squared_hinge
from bnnctl.files import atomic_torch_save
from bnnctl.runs import FORMAT_VERSION, MODEL_FORMAT

REPO = Path(__file__).resolve().parent.parent
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, ShiftBatchNorm)
ARCHS = {
    "mlp": ("mnist.yaml", ["model.hidden=[64,64]"], (1, 8, 8)),
    "convnet": ("cifar10.yaml", ["model.conv=[8,M,16,M]", "model.fc=[32]"], (3, 16, 16)),
    "mlp-shift-bn": ("mnist.yaml", ["model.hidden=[64,64]", "model.norm=shift_bn"], (1, 8, 8)),
}
cuda = pytest.mark.skipif(not torch.cuda.is_available() or not kernels.available()["cuda"],
                          reason="needs a CUDA GPU and the CUDA kernels")


def images(n: int, shape, seed: int, binary: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return torch.where(x >= 128, 255, 0).to(torch.uint8) if binary else x


def train_tiny(arch: str, steps: int = 5):
    recipe, overrides, shape = ARCHS[arch]
    cfg = load_recipe(REPO / "recipes" / recipe, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, shape, 10)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = images(64, shape, 1), torch.randint(0, 10, (64,))
    for _ in range(steps):
        loss = squared_hinge(model(scale_to_pm1(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        clip_weights_(model)
    model.eval()
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": cfg.to_dict(), "input_shape": list(shape),
              "num_classes": 10, "dataset": "tiny", "variant": "random", "epoch": 1, "test_error_pct": None,
              "valid_error_pct": None}
    return record, model


def norm_scale_params(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(gamma, variance-like buffer) of either norm kind."""
    if isinstance(norm, ShiftBatchNorm):
        return norm.weight, norm.running_inv_std
    return norm.weight, norm.running_var


@torch.no_grad()
def perturb_norms(model: nn.Module, seed: int) -> None:
    """Non-trivial statistics: random means and scales, negative gammas, a zero gamma, a zero variance."""
    g = torch.Generator().manual_seed(seed)
    for norm in (m for m in model if isinstance(m, NORMS)):
        c = norm.num_features
        gamma, var = norm_scale_params(norm)
        gamma.copy_(torch.randn(c, generator=g))
        gamma[0] = 0.0
        gamma[1] = -abs(gamma[1]) - 0.5
        norm.running_mean.copy_(torch.randn(c, generator=g) * 4)
        if isinstance(norm, ShiftBatchNorm):
            var.copy_(torch.rand(c, generator=g) * 3 + 0.05)
        else:
            var.copy_(torch.rand(c, generator=g) * 4)
            var[2] = 0.0
        norm.bias.copy_(torch.randn(c, generator=g))


def binarizing_norms(model: nn.Sequential) -> list[nn.Module]:
    mods = list(model)
    return [m for m, nxt in zip(mods, mods[1:]) if isinstance(m, NORMS) and isinstance(nxt, SignActivation)]


@torch.no_grad()
def norm_inputs(model: nn.Sequential, x: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """What each norm of the float model receives on inputs x (its own float arithmetic)."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.__setitem__(m, a[0].clone()))
             for m in model if isinstance(m, NORMS)]
    model(scale_to_pm1(x))
    for h in hooks:
        h.remove()
    return seen


@torch.no_grad()
def tie_units(model: nn.Sequential, x: torch.Tensor, units: int = 6, first_layer: bool = True) -> None:
    """Give a few units of every binarizing norm statistics under which one observed pre-activation
    lands exactly on the threshold: BN output exactly 0 (variance 1 - eps makes the scale exactly
    +/-1 or +/-2, beta 0, mean = the observed value), half of them with a negative scale."""
    for i, norm in enumerate(binarizing_norms(model)):
        if (i == 0 and not first_layer) or isinstance(norm, ShiftBatchNorm):
            continue  # shift BN evaluates (x - mean) * scale + beta: a tie at the mean is exact anyway
        z = norm_inputs(model, x)[norm]  # layer by layer: earlier ties change later inputs
        for c in range(3, min(3 + units, norm.num_features)):
            observed = z[c % z.shape[0], c] if z.dim() == 2 else z[c % z.shape[0], c, 0, 0]
            norm.running_mean[c] = observed
            norm.running_var[c] = torch.tensor(1.0) - norm.eps
            norm.weight[c] = (-1.0 if c % 2 else 1.0) * (2.0 if c % 3 == 0 else 1.0)
            norm.bias[c] = 0.0


@torch.no_grad()
def model_trace(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The float model's sign activations, then its logits."""
    signs = []
    hooks = [m.register_forward_hook(lambda m, a, out: signs.append(out.clone()))
             for m in model if isinstance(m, SignActivation)]
    logits = model(scale_to_pm1(x))
    for h in hooks:
        h.remove()
    return [*signs, logits]


def quantize_conv_biases(model: nn.Module) -> None:
    """Biases on a 1/8 grid: the float model's conv then adds integer + bias exactly whatever the
    order of its sums (oneDNN's order otherwise rounds differently from fl32(d + b), see export)."""
    with torch.no_grad():
        for m in model:
            if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.bias is not None and any(
                    isinstance(k, BinaryConv2d) for k in model):
                m.bias.copy_(torch.round(m.bias * 8) / 8)


def prepared(arch: str, tie_first_layer: bool = False):
    record, model = train_tiny(arch)
    perturb_norms(model, seed=2)
    if arch == "convnet":
        quantize_conv_biases(model)
    tie_units(model, tie_images(arch), first_layer=tie_first_layer)
    return record, model


def tie_images(arch: str) -> torch.Tensor:
    """Images of 0 and 255 only: they scale to exactly -1 and +1, so even the first layer's
    pre-activation is an integer (plus the bias) in the float model, and a tie crafted there is a tie
    for every way of computing it. On other images the first layer's pre-activation is a real-valued
    sum whose last bit depends on the order of the additions, so a tie there is decided by the float
    model's own rounding, which no other kernel reproduces: first-layer ties are only crafted here."""
    return images(32, ARCHS[arch][2], 3, binary=True)


@pytest.fixture(scope="module", params=list(ARCHS))
def arch_model(request):
    return (request.param, *prepared(request.param))


# ---------------------------------------------------------------------------- the thresholds

def test_hidden_thresholds_reproduce_the_float_norm_on_every_integer(arch_model):
    arch, record, model = arch_model
    exported = export_model(record, model)
    mods = list(model)
    blocks = [i for i, m in enumerate(mods) if isinstance(m, (BinaryLinear, BinaryConv2d))]
    shapes = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: shapes.__setitem__(m, tuple(a[0].shape[1:])))
             for m in mods if isinstance(m, NORMS)]
    model(torch.zeros(1, *ARCHS[arch][2]))
    for h in hooks:
        h.remove()
    checked_flip = checked_constant = False
    for layer, start in zip(exported.layers[1:-1], blocks[1:-1]):
        binary = mods[start]
        norm = next(m for m in mods[start:] if isinstance(m, NORMS))
        k = layer.fan_in
        candidates = torch.arange(-k, k + 1, dtype=torch.float32)
        direction = layer.tensors["direction"].long()
        threshold = layer.tensors["threshold"].long()
        for d in candidates:
            expected = fires(norm, binary.bias.detach(), shapes[norm], d.expand(layer.out_features))
            got = direction * int(d) >= direction * threshold
            assert torch.equal(expected, got), f"pre-activation {int(d)}"
        checked_flip |= bool((direction < 0).any())
        checked_constant |= bool((threshold.abs() > k).any())
    assert checked_flip and checked_constant


def test_first_layer_float_threshold_is_the_exact_float32_boundary(arch_model):
    arch, record, model = arch_model
    first = next(m for m in model if isinstance(m, (BinaryLinear, BinaryConv2d)))
    norm = binarizing_norms(model)[0]
    shape = tuple(norm_inputs(model, images(1, ARCHS[arch][2], 0))[norm].shape[1:])
    direction, threshold = fold_thresholds(norm, first.bias, shape)
    finite = torch.isfinite(threshold)
    assert finite.any() and (direction < 0).any()
    up = torch.nextafter(threshold, torch.tensor(float("inf")))
    down = torch.nextafter(threshold, torch.tensor(float("-inf")))
    at = fires(norm, first.bias.detach(), shape, threshold)
    beyond = fires(norm, first.bias.detach(), shape, torch.where(direction > 0, down, up))
    assert at[finite].all() and not beyond[finite].any()


# ---------------------------------------------------------------------------- engine == float model

@pytest.mark.parametrize("first_layer,hidden", [("float", "xnor"), ("bitplane", "xnor"), ("integer", "xnor"),
                                                ("int8", "xnor"), ("float", "float")])
def test_engine_reproduces_every_activation_of_the_float_model(arch_model, first_layer, hidden):
    arch, record, model = arch_model
    x = torch.cat([tie_images(arch), images(200, ARCHS[arch][2], 4)])
    expected = model_trace(model, x)
    engine = PackedEngine(export_model(record, model), "cpu", first_layer=first_layer, hidden=hidden)
    got = engine.trace(x)
    assert len(got) == len(expected)
    for i, (e, g) in enumerate(zip(expected[:-1], got[:-1])):
        assert torch.equal(g, e), f"layer {i + 1}: {(g != e).sum().item()} activations differ"
    assert torch.equal(got[-1].argmax(1), expected[-1].argmax(1))
    torch.testing.assert_close(got[-1].float(), expected[-1], rtol=1e-5, atol=1e-4)


def test_tied_units_sit_exactly_on_their_threshold(arch_model):
    """The crafted units really are at BN output 0 (so the test above covers the tie), and the
    units with the flipped comparison fire there too (sign(0) = +1)."""
    arch, record, model = arch_model
    if arch == "mlp-shift-bn":
        pytest.skip("ties are crafted for exact BN only")
    norm = binarizing_norms(model)[-1]
    z = norm_inputs(model, tie_images(arch))[norm]
    out = norm(z)
    c = 5  # a tied unit with a negative gamma
    at = out[c % z.shape[0], c] if out.dim() == 2 else out[c % z.shape[0], c, 0, 0]
    assert at.item() == 0.0 and norm.weight[c] < 0
    assert sign_pm1(at).item() == 1.0


@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_first_layer_ties_on_binary_images(arch):
    """Ties crafted in every layer, the first included, on images of 0 and 255."""
    record, model = prepared(arch, tie_first_layer=True)
    x = tie_images(arch)
    expected = model_trace(model, x)
    for first_layer in ("float", "bitplane", "integer", "int8"):
        got = PackedEngine(export_model(record, model), "cpu", first_layer=first_layer).trace(x)
        for i, (e, g) in enumerate(zip(expected[:-1], got[:-1])):
            assert torch.equal(g, e), f"{first_layer} first layer, layer {i + 1}"
        assert torch.equal(got[-1].argmax(1), expected[-1].argmax(1))


def test_engine_error_agrees_with_the_float_model(arch_model):
    arch, record, model = arch_model
    x = images(300, ARCHS[arch][2], 9)
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        float_error = 100.0 * (model(scale_to_pm1(x)).argmax(1) != y).sum().item() / len(y)
    assert engine_error(record, model, x, y, scale_to_pm1, torch.device("cpu")) == float_error


def test_batching_does_not_change_predictions(arch_model):
    arch, record, model = arch_model
    x = images(70, ARCHS[arch][2], 11)
    engine = PackedEngine(export_model(record, model))
    assert torch.equal(engine.predict(x, batch_size=16), engine.predict(x, batch_size=70))


def test_bitplane_first_layer_needs_eight_bit_images():
    record, model = train_tiny("mlp", steps=1)
    engine = PackedEngine(export_model(record, model), first_layer="bitplane")
    with pytest.raises(EngineError, match="8-bit"):
        engine.logits(torch.rand(2, 1, 8, 8))
    record["recipe"]["data"]["preprocess"] = "standardize"
    for first_layer in ("bitplane", "integer", "int8"):
        with pytest.raises(EngineError, match=f"the {first_layer} first layer needs"):
            PackedEngine(export_model(record, model), first_layer=first_layer)


# ---------------------------------------------------------------------------- the file

def test_export_file_round_trip(tmp_path, arch_model):
    arch, record, model = arch_model
    exported = export_model(record, model)
    path = tmp_path / "m.bnnx"
    size = save_export(exported, path)
    assert size == path.stat().st_size
    loaded = load_export(path)
    assert (loaded.input_shape, loaded.input_encoding, loaded.num_classes) == \
        (exported.input_shape, exported.input_encoding, exported.num_classes)
    for a, b in zip(exported.layers, loaded.layers):
        assert a.describe() == b.describe()
        assert torch.equal(a.weight_bits, b.weight_bits)
        assert a.tensors.keys() == b.tensors.keys()
        for name in a.tensors:
            assert a.tensors[name].dtype == b.tensors[name].dtype and torch.equal(a.tensors[name], b.tensors[name])
    x = images(50, ARCHS[arch][2], 12)
    assert torch.equal(PackedEngine(loaded).logits(x), PackedEngine(exported).logits(x))


def test_weights_are_stored_as_the_signs_of_the_latent_weights():
    record, model = train_tiny("mlp", steps=1)
    first = next(m for m in model if isinstance(m, BinaryLinear))
    bits = export_model(record, model).layers[0].weight_bits
    assert torch.equal(kernels.unpack(bits, first.in_features), sign_pm1(first.weight.detach()))


def test_bad_files_get_one_clear_error(tmp_path):
    record, model = train_tiny("mlp", steps=1)
    good = tmp_path / "good.bnnx"
    save_export(export_model(record, model), good)
    data = good.read_bytes()

    not_export = tmp_path / "best.pt"
    torch.save(record, not_export)
    with pytest.raises(ExportError, match="not a bnnctl export"):
        load_export(not_export)
    other_version = tmp_path / "v2.bnnx"
    other_version.write_bytes(MAGIC + struct.pack("<I", EXPORT_VERSION + 1) + data[len(MAGIC) + 4:])
    with pytest.raises(ExportError, match=f"version {EXPORT_VERSION + 1}.*reads versions 1, 2 and {EXPORT_VERSION}"):
        load_export(other_version)
    truncated = tmp_path / "cut.bnnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="damaged"):
        load_export(truncated)
    with pytest.raises(ExportError, match="does not exist"):
        load_export(tmp_path / "missing.bnnx")


def test_export_refuses_models_it_cannot_fold():
    record, model = train_tiny("mlp", steps=1)
    broken = nn.Sequential(*[m for m in model if not isinstance(m, SignActivation)])
    with pytest.raises(ExportError, match="sign activation"):
        export_model(record, broken)
    with pytest.raises(ExportError, match="does not know"):
        export_model(record, nn.Sequential(*model[:3], nn.ReLU(), *model[3:]))
    norm = next(m for m in model if isinstance(m, nn.BatchNorm1d))
    with torch.no_grad():
        norm.running_var[0] = float("nan")
    with pytest.raises(ExportError, match="non-finite"):
        export_model(record, model)


# ---------------------------------------------------------------------------- the command

def write_run(tmp_path: Path, record: dict, model: nn.Module) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    atomic_torch_save({**record, "model": model.state_dict()}, run / "best.pt")  # with its checksum
    (run / "recipe.yaml").write_text("")
    return run


def test_export_command_is_25x_smaller_than_the_checkpoint(tmp_path):
    """An MLP of the MNIST shape with 512-unit layers: ~0.67 M binary weights."""
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["model.hidden=[512,512]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28), 10).eval()
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": cfg.to_dict(), "input_shape": [1, 28, 28],
              "num_classes": 10, "dataset": "mnist", "variant": "random", "epoch": 3, "test_error_pct": 12.5,
              "valid_error_pct": 11.0}
    run = write_run(tmp_path, record, model)
    result = CliRunner().invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert "smaller" in result.output
    summary = json.loads((run / "model.export.json").read_text())
    assert summary["export_bytes"] == (run / "model.bnnx").stat().st_size
    assert summary["times_smaller_than_checkpoint"] >= 25
    assert summary["binary_weights"] == 784 * 512 + 512 * 512 + 512 * 10
    exported = load_export(run / "model.bnnx")
    x = images(20, (1, 28, 28), 0)
    with torch.no_grad():
        assert torch.equal(PackedEngine(exported).predict(x), model(scale_to_pm1(x)).argmax(1))
    out = tmp_path / "elsewhere.bnnx"
    assert CliRunner().invoke(app, ["export", str(run), "-o", str(out)]).exit_code == 0 and out.is_file()


def test_export_command_error_is_one_sentence(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------- CUDA

@cuda
@pytest.mark.parametrize("first_layer,hidden,impl", [("float", "xnor", "tuned"), ("bitplane", "xnor", "tuned"),
                                                     ("bitplane", "xnor", "paper"), ("integer", "xnor", "tuned"),
                                                     ("float", "float", "tuned")])
def test_cuda_engine_matches_the_float_model(arch_model, first_layer, hidden, impl):
    arch, record, model = arch_model
    x = torch.cat([tie_images(arch), images(200, ARCHS[arch][2], 4)])
    expected = model_trace(model, x)
    engine = PackedEngine(export_model(record, model), "cuda", first_layer=first_layer, hidden=hidden,
                          xnor_impl=impl)
    got = [t.cpu() for t in engine.trace(x)]
    for i, (e, g) in enumerate(zip(expected[:-1], got[:-1])):
        assert torch.equal(g, e), f"layer {i + 1}: {(g != e).sum().item()} activations differ"
    assert torch.equal(got[-1].argmax(1), expected[-1].argmax(1))


@cuda
def test_cuda_engine_error_equals_cpu(arch_model):
    arch, record, model = arch_model
    x = images(300, ARCHS[arch][2], 9)
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(0))
    assert engine_error(record, model, x, y, scale_to_pm1, torch.device("cuda")) == \
        engine_error(record, model, x, y, scale_to_pm1, torch.device("cpu"))


# ---------------------------------------------------------------------------- bench --model mnist-mlp

def test_model_bench_records_every_variant_with_equal_predictions(tmp_path):
    """The bench on a small MLP of the MNIST shape, random images (no MNIST under the data dir)."""
    from bnnctl.bench.mlp import float_model_from_export
    from bnnctl.bench.model_bench import bench_model, print_model_table
    from bnnctl.bench.timing import record
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["model.hidden=[96,64]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28), 10).eval()
    perturb_norms(model, seed=3)
    record_ = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": cfg.to_dict(), "input_shape": [1, 28, 28],
               "num_classes": 10, "dataset": "mnist", "variant": "random", "epoch": 2, "test_error_pct": 50.0,
               "valid_error_pct": 50.0}
    run = write_run(tmp_path, record_, model)
    result = bench_model("mnist-mlp", run, "cpu", tmp_path / "no-data", repeat=1, images=2000)
    v = result["variants"]
    assert [v[n]["status"] for n in ("baseline", "xnor", "xnor-bitplane", "xnor-integer", "torch")] == ["ok"] * 5
    assert v["xnor-paper"]["status"].startswith("not run")
    assert result["targets"]["exact_variants_same_predictions"] and result["targets"]["all_of_a_to_c_ran"]
    assert v["torch-bf16"]["status"] == "ok" and v["torch-int8"]["status"] == "ok"
    # bf16 rounds its sums, so only its differences are recorded; every exact variant agrees with fp32 torch
    assert all(v[n]["predictions_differing_from_torch"] == 0 for n in v if v[n]["status"] == "ok" and n != "torch-bf16")
    assert v["baseline"]["x_baseline"] == 1.0 and v["torch"]["x_torch"] == 1.0
    best = result["targets"]["best_torch"]
    assert best in ("torch", "torch-bf16", "torch-int8")
    assert all(v[n]["median_ms"] >= v[best]["median_ms"] for n in ("torch", "torch-bf16", "torch-int8"))
    fastest = result["targets"]["fastest_engine"]
    assert result["targets"]["fastest_engine_x_best_torch"] == v[best]["median_ms"] / v[fastest]["median_ms"]
    assert result["model"]["architecture"] == "784-96-64-10" and result["model"]["weights"] == "trained"
    assert "random 8-bit images" in result["data"]["source"] and v["xnor"]["test_error_pct"] is None
    path = record(result, tmp_path / "bench")
    assert json.loads(path.read_text())["kind"] == "mnist-mlp" and path.name.endswith("-cpu-mnist-mlp.json")
    print_model_table(result, Console(width=120, record=True))
    # the float model rebuilt from an export predicts what the trained one does
    x = images(100, (1, 28, 28), 5)
    rebuilt = float_model_from_export(export_model(record_, model))
    with torch.no_grad():
        assert torch.equal(rebuilt(scale_to_pm1(x)).argmax(1), model(scale_to_pm1(x)).argmax(1))


def test_model_bench_finds_the_newest_finished_mnist_run(tmp_path):
    from bnnctl.bench.mlp import SPEC, find_model
    from bnnctl.recipe import dump_recipe
    paper_mlp = dump_recipe(load_recipe(REPO / "recipes" / "mnist.yaml"))
    small_mlp = dump_recipe(load_recipe(REPO / "recipes" / "mnist.yaml", ["model.hidden=[64]"]))
    for name, recipe, status, files in [("a", paper_mlp, "finished", ["best.pt"]),
                                        ("b", paper_mlp, "running", ["best.pt"]),
                                        ("c", small_mlp, "finished", ["best.pt"]),
                                        ("d", paper_mlp, "finished", [])]:
        run = tmp_path / "mnist" / name
        run.mkdir(parents=True)
        (run / "recipe.yaml").write_text(recipe)
        (run / "result.json").write_text(json.dumps({"status": status}))
        for f in files:
            (run / f).write_bytes(b"")
    assert find_model(tmp_path, SPEC) == tmp_path / "mnist" / "a" / "best.pt"
    assert find_model(tmp_path / "nothing", SPEC) is None


def test_model_bench_command_runs_the_selected_variants(tmp_path):
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["model.hidden=[32]"])
    model = build_model(cfg.model, (1, 28, 28), 10).eval()
    perturb_norms(model, seed=4)  # thresholds away from 0, where the exact engine and fp32 torch may tie
    record_ = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": cfg.to_dict(), "input_shape": [1, 28, 28],
               "num_classes": 10, "dataset": "mnist", "variant": "random", "epoch": 1, "test_error_pct": None,
               "valid_error_pct": None}
    run = write_run(tmp_path, record_, model)
    args = ["bench", "--model", "mnist-mlp", "--run", str(run), "--device", "cpu", "--repeat", "1",
            "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "bench")]
    result = CliRunner().invoke(app, args + ["--variant", "xnor-integer,torch"])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "bench").glob("*.json")
    recorded = json.loads(path.read_text())
    assert recorded["command"] == shlex.join(["bnnctl", *args, "--variant", "xnor-integer,torch"])  # as typed
    assert {n for n, e in recorded["variants"].items() if e["status"] == "ok"} == {"xnor-integer", "torch"}
    assert recorded["variants"]["baseline"]["status"] == "not run: not selected"
    bad = CliRunner().invoke(app, args + ["--variant", "nope"])
    assert bad.exit_code == 2 and "unknown variant nope" in bad.output
