"""`bnnctl bench --model cifar10-convnet / svhn-convnet`: the ConvNet bench end to end, on a ConvNet of the
recipes' kind shrunk to two small conv layers (``model_recipe`` is patched) and a few 32 x 32 images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnnctl.bench import convnet, model_bench
from bnnctl.bench.model_bench import SPECS
from bnnctl.bench.models import calibrate_norms, frozen_float_model
from bnnctl.bench.specs import ModelSpec
from bnnctl.cli import app
from bnnctl.core.models import build_model
from bnnctl.data import scale_to_pm1
from bnnctl.errors import UserError
from bnnctl.files import atomic_torch_save
from bnnctl.recipe import Recipe, load_recipe, recipes_dir
from bnnctl.runs import FORMAT_VERSION, MODEL_FORMAT

SMALL = ["model.conv=[8,M,16,M]", "model.fc=[32]"]
CPU_VARIANTS = {name for name, v in convnet.VARIANTS.items() if "cpu" in v.devices}


def small_recipe(model_name: str, overrides=()) -> dict:
    return load_recipe(recipes_dir() / SPECS[model_name].recipe_file, [*SMALL, *overrides])


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(ModelSpec, "recipe", lambda spec: small_recipe(spec.name))


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def test_cli_bench_runs_every_variant_end_to_end_and_records_it(tmp_path, small):
    out = tmp_path / "out"
    res = run_cli("--model", "cifar10-convnet", "--device", "cpu", "--repeat", "2", "--images", "16",
                  "--data-dir", str(tmp_path / "no-data"), "--out", str(out))
    assert res.exit_code == 0, res.output
    (path,) = out.glob("*-cpu-cifar10-convnet.json")
    rec = json.loads(path.read_text())
    assert rec["kind"] == "cifar10-convnet" and rec["device"]["type"] == "cpu" and rec["device"]["hardware"]
    assert rec["command"].startswith("bnnctl bench --model cifar10-convnet --device cpu")
    assert rec["model"]["architecture"] == "8C3-MP2-16C3-MP2-32FC-10" and rec["model"]["source"] is None
    assert rec["model"]["weights"].startswith("random (seed 0")
    assert rec["data"]["images"] == 16 and rec["data"]["dataset"] is None and "random 8-bit" in rec["data"]["source"]
    ran = {name for name, e in rec["variants"].items() if e["status"] == "ok"}
    assert ran == CPU_VARIANTS and rec["variants"]["xnor-bitplane-tc"]["status"].startswith("not run")
    torch_ms = rec["variants"]["torch"]["median_ms"]
    best = min((n for n in ran if not convnet.VARIANTS[n].engine), key=lambda n: rec["variants"][n]["median_ms"])
    for name in ran:
        e = rec["variants"][name]
        assert e["runs"] == 2 and e["median_ms"] > 0
        assert e["images_per_s"] == pytest.approx(16 / (e["median_ms"] / 1e3))
        assert e["x_torch"] == pytest.approx(torch_ms / e["median_ms"])
        assert e["x_best_torch"] == pytest.approx(rec["variants"][best]["median_ms"] / e["median_ms"])
        for key in ("x_torch_channels_last", "x_torch_bf16"):
            assert e[key] > 0
        assert e["test_error_pct"] is None  # random images: no labels
        if convnet.VARIANTS[name].engine:
            assert e["predictions_differing_from_float"] == 0, name
    assert rec["variants"]["torch"]["predictions_differing_from_float"] == 0
    t = rec["targets"]
    assert t["exact_variants_same_predictions"] is True and t["best_torch"] == best
    assert set(t["exact_variants_checked"]) == {n for n in ran if convnet.VARIANTS[n].exact}
    assert {"torch-bf16", "torch-channels-last"}.isdisjoint(t["exact_variants_checked"])
    assert convnet.VARIANTS[t["fastest_engine"]].packed and t["fastest_engine_x_torch"] > 0
    assert rec["status"] == "ok" and rec["load"]["threads"] == torch.get_num_threads()
    assert "xnor-integer" in res.output and "images/s" in res.output and "recorded" in res.output


def test_svhn_convnet_runs_the_selected_variants(tmp_path, small):
    result = model_bench.bench_model("svhn-convnet", None, "cpu", tmp_path / "no-data", repeat=1, images=8,
                                   names=["xnor-bitplane", "torch-bf16"])
    assert result["model"]["architecture"] == "8C3-MP2-16C3-MP2-32FC-10" and result["model"]["recipe"] == "svhn"
    ok = {n for n, e in result["variants"].items() if e["status"] == "ok"}
    assert ok == {"xnor-bitplane", "torch-bf16"}
    assert result["variants"]["torch"]["status"] == "not run: not selected"
    # the fp32 reference is still run once, untimed, to check the engine against
    assert "untimed" in result["reference"]["predictions"]
    assert result["variants"]["xnor-bitplane"]["predictions_differing_from_float"] == 0
    assert result["variants"]["xnor-bitplane"]["x_torch"] is None  # fp32 was not timed


def test_the_frozen_torch_model_computes_exactly_what_the_float_model_does(small):
    torch.manual_seed(3)
    model = build_model(small_recipe("cifar10-convnet").model, (3, 32, 32), 10)
    calibrate_norms(model, convnet.INPUT_SHAPE)
    x = scale_to_pm1(torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        assert torch.equal(frozen_float_model(model)(x), model(x))


def test_random_weights_are_seeded_and_their_thresholds_sit_among_the_pre_activations(small):
    loaded = convnet.load_convnet(SPECS["cifar10-convnet"], None)
    a, b, info = loaded.float_model, convnet.load_convnet(SPECS["cifar10-convnet"], None).float_model, loaded.info
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not a.training
    first_norm = next(m for m in a if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(first_norm.running_mean, torch.zeros_like(first_norm.running_mean))
    assert "random" in info["weights"]


def write_stand_in(root, n_test=20):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    x_train = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "cifar10-jpeg.npz", x_train=x_train, y_train=np.arange(30) % 10, x_test=x_test,
             y_test=np.arange(n_test) % 10, variant="cifar10-jpeg")


def test_the_cifar10_stand_in_is_used_and_named_as_what_it_is(tmp_path, small):
    write_stand_in(tmp_path / "data")
    result = model_bench.bench_model("cifar10-convnet", None, "cpu", tmp_path / "data", repeat=1, images=12,
                                   names=["xnor-integer", "torch"])
    data = result["data"]
    assert data["dataset"] == "cifar10-jpeg" and data["images"] == 12
    assert "cifar10-jpeg" in data["source"] and "not cifar10 itself" in data["source"]
    assert "CIFAR-10" not in json.dumps(result)
    e = result["variants"]["xnor-integer"]
    assert e["test_error_pct"] is not None and e["predictions_differing_from_float"] == 0


def write_svhn_originals(root):
    """train_32x32.mat and test_32x32.mat in their layout: X (32, 32, 3, N) uint8, y (N, 1), 0 stored as 10."""
    scipy_io = pytest.importorskip("scipy.io")
    (root / "SVHN").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("test", 9)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10).reshape(-1, 1)
        stored = np.where(y == 0, 10, y).astype(np.uint8)
        scipy_io.savemat(str(root / "SVHN" / f"{split}_32x32.mat"), {"X": x, "y": stored})


def test_svhn_files_are_md5_checked_unless_the_run_names_its_variant(tmp_path, small):
    root = tmp_path / "data"
    write_svhn_originals(root)
    with pytest.raises(UserError, match="fails its md5 check"):  # not the originals: never recorded as svhn
        model_bench.bench_model("svhn-convnet", None, "cpu", root, repeat=1, images=4, names=["xnor-integer"])
    run, _ = write_run(tmp_path, small_recipe("svhn-convnet", ["data.variant=svhn-synthetic"]))
    result = model_bench.bench_model("svhn-convnet", run, "cpu", root, repeat=1, images=9, names=["xnor-integer"])
    assert result["data"]["dataset"] == "svhn-synthetic"
    assert "the first 9 of the 9 test images of svhn-synthetic" in result["data"]["source"]
    assert result["variants"]["xnor-integer"]["test_error_pct"] is not None


def test_more_images_than_the_test_set_is_one_sentence(tmp_path, small):
    write_stand_in(tmp_path / "data", n_test=10)
    with pytest.raises(UserError, match=r"^--images 11 is more than the 10 test images of cifar10-jpeg in .*\.$"):
        model_bench.bench_model("cifar10-convnet", None, "cpu", tmp_path / "data", repeat=1, images=11)


def write_run(tmp_path, recipe: dict, seed: int = 1):
    torch.manual_seed(seed)
    model = build_model(recipe.model, (3, 32, 32), 10)
    calibrate_norms(model, convnet.INPUT_SHAPE, seed=seed)
    run = tmp_path / "run"
    run.mkdir()
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": recipe.to_dict(), "input_shape": [3, 32, 32],
              "num_classes": 10, "dataset": "cifar10", "variant": "cifar10-jpeg", "epoch": 3, "test_error_pct": 50.0,
              "valid_error_pct": 50.0}
    atomic_torch_save({**record, "model": model.state_dict()}, run / "best.pt")
    return run, model


def test_trained_weights_come_from_the_run(tmp_path, small):
    run, _ = write_run(tmp_path, small_recipe("cifar10-convnet"))
    result = model_bench.bench_model("cifar10-convnet", run, "cpu", tmp_path / "no-data", repeat=1, images=8,
                                   names=["xnor-integer", "torch"])
    m = result["model"]
    assert m["weights"] == "trained" and m["source"] == str(run / "best.pt") and m["epoch"] == 3
    assert m["trained_on"] == "cifar10-jpeg"
    assert result["targets"]["exact_variants_same_predictions"] is True


@pytest.mark.parametrize("case,message", [
    ("other-architecture", "whose architecture is not the cifar10-convnet one"),
    ("export", "is an export; the cifar10-convnet bench needs the run's best.pt"),
    ("empty-dir", "holds no best.pt"),
])
def test_runs_the_bench_cannot_use_are_one_sentence(tmp_path, small, case, message):
    if case == "other-architecture":
        run, _ = write_run(tmp_path, small_recipe("cifar10-convnet", ["model.fc=[16]"]))
    elif case == "export":
        run = tmp_path / "model.bnnx"
        run.write_bytes(b"")
    else:
        run = tmp_path / "empty"
        run.mkdir()
    res = run_cli("--model", "cifar10-convnet", "--run", str(run), "--device", "cpu", "--repeat", "1", "--images", "4",
                  "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and message in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def predict_other_classes(monkeypatch, variant: str) -> None:
    """Make the bench's variant ``variant`` predict the next class to the one it computes, on every image."""
    real = model_bench.runner

    def wrong_runner(spec, name, *args):
        step = real(spec, name, *args)
        return (lambda xb: (step(xb) + 1) % 10) if name == variant else step

    monkeypatch.setattr(model_bench, "runner", wrong_runner)


def test_an_engine_that_predicts_other_classes_is_recorded_and_fails_the_command(tmp_path, small, monkeypatch):
    predict_other_classes(monkeypatch, "xnor-integer")
    res = run_cli("--model", "cifar10-convnet", "--variant", "xnor-integer,torch", "--device", "cpu", "--repeat", "1",
                  "--images", "6", "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path))
    assert res.exit_code == 2
    assert "xnor-integer predicted other classes than the fp32 float model, so a kernel is wrong" in res.output
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert rec["variants"]["xnor-integer"]["predictions_differing_from_float"] == 6
    assert rec["targets"]["exact_variants_same_predictions"] is False
    assert rec["status"] == "failed" and "xnor-integer predicted other classes" in rec["problem"]


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet"], "unknown --model 'resnet'; choose mnist-mlp, cifar10-convnet, svhn-convnet."),
    (["--model", "mnist-mlp", "--images", "5"], "--images applies to cifar10-convnet and svhn-convnet"),
    (["--images", "5"], "--images goes with --model."),
    (["--variant", "xnor"], "--variant goes with --model; the kernel bench takes --kernel."),
    (["--model", "mnist-mlp", "--kernel", "xnor"], "with --model, choose the model's variants with --variant."),
    (["--model", "mnist-mlp", "--m", "8"], "--m goes with the kernel bench, not with --model."),
    (["--model", "cifar10-convnet", "--images", "0"], "--images must be at least 1, got 0."),
    (["--model", "svhn-convnet", "--variant", "xnor-tc"], "unknown variant xnor-tc for --variant"),
    (["--model", "svhn-convnet", "--variant", "xnor,xnor-bitplane-tc"],
     "--variant xnor-bitplane-tc cannot run here: it runs on cuda only, not on cpu; leave it out"),
])
def test_bad_bench_model_arguments_are_one_sentence(tmp_path, args, message):
    res = run_cli(*args, "--device", "cpu", "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and message in res.output.replace("\n", " ")
    assert "Traceback" not in res.output
