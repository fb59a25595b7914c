"""A binarized network of one's own, from bnnctl's Python API: build, train, export, run on packed bits.

    python3 examples/own_bnn.py                 # seconds on a CPU (the first run also builds the kernels)
    python3 examples/own_bnn.py --out own.bnnx  # keep the 1-bit export

The data are synthetic 8 x 8 8-bit images: ten random prototypes with noise added, one class each. The
network is a small ConvNet in the paper's layer order (binary conv, max-pool, shift-based BN, sign; binary
dense, shift-based BN, sign; binary dense, BN), trained with the paper's squared hinge loss and shift-based
AdaMax, each binary layer at its Glorot LR scale. The trained model is exported (packed sign bits, BN and
sign folded into integer thresholds), written to a .bnnx file, read back and run on the packed XNOR engine,
whose predictions must equal the float model's on every test image: the script exits 1 where one differs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import bnnctl

SIDE, CLASSES = 8, 10


def synthetic_images(n: int, prototypes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images (n, 1, SIDE, SIDE): a random class's prototype plus Gaussian noise; and the labels."""
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    noise = torch.randn(n, 1, SIDE, SIDE, generator=generator) * 110
    return (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8), labels


def scaled(x: torch.Tensor) -> torch.Tensor:
    """8-bit pixels to [-1, 1] as 2x/255 - 1: the inputs an export with input_encoding "uint8_scale" expects."""
    return x.float() * (2.0 / 255.0) - 1.0


def build_model() -> nn.Sequential:
    # No biases: a BN follows every binary layer, which makes a bias redundant.
    return nn.Sequential(
        bnnctl.BinaryConv2d(1, 16, kernel_size=3, padding=1, bias=False),
        nn.MaxPool2d(2),
        bnnctl.ShiftBatchNorm(16),
        bnnctl.SignActivation(),
        nn.Flatten(),
        bnnctl.BinaryLinear(16 * (SIDE // 2) ** 2, 128, bias=False),
        bnnctl.ShiftBatchNorm(128),
        bnnctl.SignActivation(),
        bnnctl.BinaryLinear(128, CLASSES, bias=False),
        nn.BatchNorm1d(CLASSES),
    )


def train(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int,
          generator: torch.Generator) -> None:
    lr = 2.0 ** -6
    optimizer = bnnctl.ShiftAdaMax(bnnctl.param_groups(model, lr=lr))
    model.train()
    for epoch in range(epochs):
        bnnctl.set_lr(optimizer, lr * 0.5 ** epoch)
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), batch_size):
            batch = order[i:i + batch_size]
            loss = bnnctl.squared_hinge(model(scaled(x[batch])), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bnnctl.clip_weights_(model)  # latent weights back into [-1, 1]
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}: training loss {total / len(x):.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the export here (default: a temporary file)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    prototypes = torch.randint(0, 256, (CLASSES, 1, SIDE, SIDE), generator=generator).float()
    x_train, y_train = synthetic_images(3000, prototypes, generator)
    x_test, y_test = synthetic_images(1000, prototypes, generator)

    model = build_model()
    train(model, x_train, y_train, args.epochs, batch_size=100, generator=generator)

    model.eval()
    with torch.no_grad():
        float_predictions = model(scaled(x_test)).argmax(1)
    print(f"float model: test error {100.0 * (float_predictions != y_test).float().mean():.2f}%")

    exported = bnnctl.export_sequential(model, input_shape=(1, SIDE, SIDE), num_classes=CLASSES,
                                        input_encoding="uint8_scale", info={"recipe": "examples/own_bnn.py"})
    with tempfile.TemporaryDirectory() as scratch:
        path = args.out or Path(scratch) / "own.bnnx"
        size = bnnctl.save_export(exported, path)
        loaded = bnnctl.load_export(path)
        print(f"exported to {path if args.out else 'a temporary .bnnx'}: {size} bytes, "
              f"{loaded.binary_weights} binary weights ({loaded.binary_weights * 4} bytes as float32)")

    engine = bnnctl.PackedEngine(loaded, device="cpu")  # XNOR-popcount; the fastest exact variant for each batch
    packed_predictions = engine.predict(x_test).cpu()
    print(f"packed engine (variant {engine.variant_for(len(x_test))}, {engine.hidden} hidden layers): test error "
          f"{100.0 * (packed_predictions != y_test).float().mean():.2f}%")

    differ = int((packed_predictions != float_predictions).sum())
    if differ:
        print(f"FAILED: the packed engine's prediction differs from the float model's on {differ} of "
              f"{len(x_test)} test images", file=sys.stderr)
        return 1
    print(f"OK: the packed engine predicts what the float model predicts on all {len(x_test)} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
