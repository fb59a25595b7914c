"""``bnnctl bench``: the paper's speed claims measured on today's hardware.

``kernels`` times the binary matrix product of Figure 3 (the XNOR kernels against the paper's float
baseline, cuBLAS fp32 and torch bf16); ``model_bench`` is the one driver of the model benches (``latency``
its latency mode, ``--batch``: each call timed alone, per thread count, against the memory floor), whose
specs (``specs.ModelSpec``) sit beside their loaders in ``mlp`` (the MNIST MLP) and ``convnet`` (the
CIFAR-10 and SVHN ConvNets); ``tensorcore`` times the tensor-core kernel's configurations; ``timing``
holds what they share: the timing loops, the settings every measurement runs under (TF32 off,
inference mode), name selection, memory checks, and writing the record under ``runs/bench/`` (``--out``)
through ``bnnctl.bench_records``, the schema the report reads. ``run`` is the command.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import UserError


def run(*, kernel: str | None, variant: str | None, model: str | None, m: int | None, n: int | None,
        k: int | None, repeat: int, device: str, out: Path, popc_peak: float | None, run_path: Path | None,
        data_dir: Path | None, images: int | None, command: str, console: Console, batch: int | None = None,
        threads: str | None = None) -> Path:
    """``bnnctl bench``: the kernel bench, or with ``model`` a model bench (with ``batch``, its latency mode);
    returns the record's path."""
    if threads is not None and batch is None:
        raise UserError("--threads goes with --batch, the latency mode of a model bench.")
    if model is None:
        if variant is not None:
            raise UserError("--variant goes with --model; the kernel bench takes --kernel.")
        for option, value in (("--batch", batch), ("--images", images), ("--run", run_path), ("--data-dir", data_dir)):
            if value is not None:
                raise UserError(f"{option} goes with --model.")
        from .kernels import run_bench
        return run_bench(kernel=kernel or "all", m=m, n=n, k=k, repeat=repeat, device=device, out=out,
                         popc_peak_tbops=popc_peak, command=command, console=console)
    if kernel is not None:
        raise UserError("--kernel names the kernels of the matrix-product bench; with --model, choose the model's "
                        "variants with --variant.")
    for option, value in (("--m", m), ("--n", n), ("--k", k), ("--popc-peak", popc_peak)):
        if value is not None:
            raise UserError(f"{option} goes with the kernel bench, not with --model.")
    if batch is not None:
        from .latency import run_latency
        return run_latency(model=model, run=run_path, device=device, data_dir=data_dir, repeat=repeat, out=out,
                           command=command, console=console, variants=variant or "all", images=images, batch=batch,
                           threads=threads)
    from .model_bench import run_model
    return run_model(model=model, run=run_path, device=device, data_dir=data_dir, repeat=repeat, out=out,
                     command=command, console=console, variants=variant or "all", images=images)


__all__ = ["run"]
