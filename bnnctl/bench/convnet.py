"""``bnnctl bench --model cifar10-convnet`` / ``svhn-convnet``: the paper's ConvNets on the packed engine
(their specs and loaders; ``model_bench`` runs them).

The paper's Table 1 ConvNets (``recipes/cifar10.yaml``: (2x128C3)-MP2-(2x256C3)-MP2-(2x512C3)-MP2-
(2x1024FC)-10; ``recipes/svhn.yaml``: the same with half the conv widths), each run from 8-bit images
on the device to predicted classes, batch by batch, over the test images:

  xnor-integer      packed engine: XNOR kernels, first layer as exact integers on torch's fp32 matmul;
  xnor-int8         packed engine: XNOR kernels, first layer as exact integers on torch's int8 matmul;
  xnor-bitplane     packed engine: XNOR kernels, first layer on the 8 bit planes (the paper's Algorithm 5);
  xnor              packed engine: XNOR kernels, first layer on the float baseline kernel (the paper's setup);
  torch             the float model in torch, fp32, NCHW (cuDNN with TF32 off / oneDNN): the reference;
  torch-channels-last  the same fp32 model and inputs in channels-last memory format;
  torch-bf16        the same model in bfloat16, channels-last (oneDNN with AVX512-BF16 / AMX on a CPU).

Every engine variant must predict exactly the float model's class on every image (``torch``, fp32:
the model that was trained); a difference is recorded and fails the command (when the fp32 variant is not
selected, the float model runs once, untimed, to check against). The bf16 and
channels-last models are timed for speed; their differences from the fp32 model (bf16 rounds the
inputs, the sums and the BN) are recorded, not checked.

The model: ``--run`` (a run directory or its ``best.pt``, of the same architecture; its inputs preprocessed as
its recipe says, the engine variants needing 8-bit scaled inputs left out for other preprocessing) or else
random weights (seed 0) whose BatchNorm statistics are set from one
batch of random images, so that every unit's threshold sits among its pre-activations as in a trained
network (at BN's initial statistics every first-layer threshold would sit exactly at 0, where the exact
integer pre-activation of the engine and the float model's rounded one tie).

The data: the dataset's test images under the data root (the run's pre-staged ``.npz`` if its recipe
names one, else the original files, else, for CIFAR-10, the ``cifar10-jpeg.npz`` stand-in, which is
recorded as ``cifar10-jpeg`` and never as CIFAR-10), the first ``--images`` of them (default 10,000);
without any, that many random 8-bit images (seed 0), and the error column is not a test error.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..core.models import build_model
from ..data import DATASETS, data_root, load_npz, scale_to_pm1, wants_npz
from ..data.common import npz_path
from ..errors import UserError
from ..infer.engine import default_batch_size
from ..checkpoints import load_model
from ..infer.bnnx import EXPORT_SUFFIX
from ..infer.fold import export_model
from ..infer.variants import ENGINE_VARIANTS
from ..recipe import DataConfig, ModelConfig, Recipe, resolve
from ..runs import BEST_FILE
from .models import CALIBRATION_IMAGES, SEED, calibrate_norms
from .specs import LoadedModel, ModelSpec, ModelVariant, TestImages, engine_row, model_transform

INPUT_SHAPE, NUM_CLASSES = (3, 32, 32), 10
IMAGES = 10_000
CUDA_BATCH = 1000  # on a CPU: the engine's own batch for conv nets (infer.engine.default_batch_size)
STAND_IN = "cifar10-jpeg.npz"  # the CIFAR-10 stand-in, built from the JPEG reconstruction of CIFAR-10

# The engine's variants but the float baseline kernel on every layer (a pass over the test set takes minutes on
# the conv layers) and the CUDA kernels of the MLP's Figure 3 (the paper-style and carry-save ones).
NOT_BENCHED = ("baseline", "xnor-paper", "xnor-bitplane-csa")

VARIANTS: dict[str, ModelVariant] = {
    **{name: engine_row(name) for name in ENGINE_VARIANTS if name not in NOT_BENCHED},
    "torch": ModelVariant("the float model in torch, fp32, NCHW (TF32 off): the reference"),
    "torch-channels-last": ModelVariant("the float model in torch, fp32, channels-last", channels_last=True,
                                        exact=False),
    "torch-bf16": ModelVariant("the float model in torch, bfloat16, channels-last", dtype=torch.bfloat16,
                               channels_last=True, exact=False),
}


# ---------------------------------------------------------------------------- model

def _architecture(model_cfg: ModelConfig) -> tuple:
    return model_cfg.arch, tuple(model_cfg.conv), tuple(model_cfg.fc), model_cfg.kernel_size


def architecture_text(model_cfg: ModelConfig, classes: int = NUM_CLASSES) -> str:
    """e.g. 128C3-128C3-MP2-...-1024FC-1024FC-10."""
    k = model_cfg.kernel_size
    parts = ["MP2" if c == "M" else f"{c}C{k}" for c in model_cfg.conv]
    return "-".join(parts + [f"{w}FC" for w in model_cfg.fc] + [str(classes)])


def _check_run_recipe(recipe: Recipe, wanted: Recipe, model_name: str, path: Path) -> None:
    if _architecture(recipe.model) != _architecture(wanted.model):
        raise UserError(f"{path} holds a {recipe.name} model whose architecture is not the "
                        f"{model_name} one ({architecture_text(wanted.model)}).")


def load_convnet(spec: ModelSpec, run: Path | None, results: Path | None = None) -> LoadedModel:
    """The model from --run (its best.pt) or random weights; ``results`` is not searched (the ConvNets
    have no recorded run of the paper's schedule)."""
    wanted = spec.recipe()
    if run is None:
        torch.manual_seed(SEED)
        model = build_model(wanted.model, INPUT_SHAPE, NUM_CLASSES)
        calibrate_norms(model, INPUT_SHAPE)
        record = {"recipe": wanted.to_dict(), "input_shape": list(INPUT_SHAPE), "num_classes": NUM_CLASSES}
        return LoadedModel(export_model(record, model), model.eval(), {
            "source": None, "recipe": wanted.name,
            "weights": f"random (seed {SEED}; BN statistics from {CALIBRATION_IMAGES} random images): the error "
                       "column says nothing about accuracy",
            "epoch": None, "recorded_test_error_pct": None, "preprocess": wanted.data.preprocess}, wanted.data)
    path = run / BEST_FILE if run.is_dir() else run
    if path.suffix == EXPORT_SUFFIX:
        raise UserError(f"{path} is an export; the {spec.name} bench needs the run's {BEST_FILE}, the float model "
                        "it checks the engine against.")
    if run.is_dir() and not path.is_file():
        raise UserError(f"{run} holds no {BEST_FILE}, the trained model the bench times.")
    record, model, recorded = load_model(path)
    recipe = resolve(record["recipe"], str(path))
    _check_run_recipe(recipe, wanted, spec.name, path)
    if tuple(record.get("input_shape", ())) != INPUT_SHAPE or record.get("num_classes") != NUM_CLASSES:
        raise UserError(f"{path} holds a model for inputs {record.get('input_shape')} and {record.get('num_classes')} "
                        f"classes; the {spec.name} bench runs 3 x 32 x 32 images and 10 classes.")
    return LoadedModel(export_model(record, model), model, {
        "source": str(path), "recipe": recipe.name, "weights": "trained",
        "run_status": recorded.get("status"), "epoch": record.get("epoch"),
        "recorded_test_error_pct": record.get("test_error_pct"), "trained_on": record.get("variant"),
        "preprocess": recipe.data.preprocess}, recipe.data)


# ---------------------------------------------------------------------------- data

# The original files the loaders read (torchvision's names; checked here without importing torchvision).
ORIGINAL_FILES = {"cifar10": [f"cifar-10-batches-py/{name}" for name in
                              [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]],
                  "svhn": ["SVHN/train_32x32.mat", "SVHN/test_32x32.mat"]}


def _originals_present(dataset: str, root: Path) -> bool:
    """The original files are all there (the loaders would otherwise try to download them)."""
    return all((root / name).is_file() for name in ORIGINAL_FILES[dataset])


def load_test_images(spec: ModelSpec, data_dir: Path | None, data_cfg: DataConfig, count: int) -> TestImages:
    """The first ``count`` test images (uint8 NCHW) and labels of the spec's dataset, or ``count`` random
    8-bit images (labels None); the description says images, source, dataset (the variant measured on)."""
    dataset = spec.recipe().data.dataset
    root = data_root(data_dir)
    raw, where = None, None
    if wants_npz(data_cfg) and data_cfg.npz:
        path = npz_path(data_cfg, root)
        if path.is_file():
            raw, where = load_npz(path, dataset, channels=INPUT_SHAPE[0]), str(path)
    if raw is None and root.is_dir() and _originals_present(dataset, root):
        # md5-checked as the originals unless the run's recipe names its own variant of them (e.g. svhn-synthetic);
        # split "tail": SVHN's train and test files only, not extra
        variant = None if wants_npz(data_cfg) else data_cfg.variant
        cfg = replace(data_cfg, source="auto", npz=None, variant=variant, split="tail")
        raw, where = DATASETS[dataset](cfg, root), str(root)
    if raw is None and dataset == "cifar10" and (root / STAND_IN).is_file():
        raw, where = load_npz(root / STAND_IN, dataset, channels=INPUT_SHAPE[0]), str(root / STAND_IN)
    if raw is None:
        if data_cfg.preprocess != "scale":
            raise UserError(f"the model was trained on inputs preprocessed as {data_cfg.preprocess!r}, fitted on its "
                            f"training images, and there is no {dataset} data set under {root} to fit it on; give "
                            "--data-dir the data root that holds it.")
        g = torch.Generator().manual_seed(SEED)
        x = torch.randint(0, 256, (count, *INPUT_SHAPE), generator=g, dtype=torch.uint8)
        return TestImages(x, None, {"images": count, "dataset": None,
                                    "source": f"{count:,} random 8-bit images (no {dataset} test set under {root}): "
                                              "the error column is not a test error"}, scale_to_pm1)
    total = len(raw.x_test)
    if tuple(raw.x_test.shape[1:]) != INPUT_SHAPE:
        raise UserError(f"the test images in {where} have shape {list(raw.x_test.shape[1:])}; the ConvNet takes "
                        f"{list(INPUT_SHAPE)}.")
    if count > total:
        raise UserError(f"--images {count} is more than the {total:,} test images of {raw.variant} in {where}.")
    stand_in = "" if raw.variant == dataset else f", a stand-in for {dataset}, not {dataset} itself"
    x = torch.from_numpy(raw.x_test[:count].copy())
    y = torch.from_numpy(raw.y_test[:count].copy()).long()
    return TestImages(x, y, {"images": count, "dataset": raw.variant, "path": where,
                             "source": f"the first {count:,} of the {total:,} test images of {raw.variant} "
                                       f"({where}{stand_in})"}, model_transform(data_cfg, root))


def _spec(name: str, title: str, recipe_file: str) -> ModelSpec:
    return ModelSpec(
        name=name, title=title, recipe_file=recipe_file, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
        variants=VARIANTS, load_model=load_convnet, load_images=load_test_images,
        architecture=lambda spec, model: architecture_text(spec.recipe().model),
        batch=lambda device, exported: CUDA_BATCH if device == "cuda" else default_batch_size(exported),
        images=IMAGES, images_option=True,
        ratios={"x_torch": "torch", "x_torch_channels_last": "torch-channels-last", "x_torch_bf16": "torch-bf16"},
        differing_key="predictions_differing_from_float")


SPECS = (_spec("cifar10-convnet", "CIFAR-10 ConvNet", "cifar10.yaml"), _spec("svhn-convnet", "SVHN ConvNet", "svhn.yaml"))


__all__ = ["SPECS", "VARIANTS", "IMAGES", "INPUT_SHAPE", "architecture_text", "load_convnet", "load_test_images"]
