"""``bnnctl bench --model NAME``: one driver for every model bench (the specs: ``mlp.SPEC``, ``convnet.SPECS``).

Each variant runs the model from 8-bit images on the device to predicted classes, batch by batch over
the test images, the variants taking turns (``timing.time_model_passes``). Every variant the spec marks
exact must predict exactly the classes of the fp32 float model (the ``torch`` variant, or, when that is
not selected, the float model run once untimed); bf16 and other rounding variants are timed for speed
and their differences recorded, not checked. A variant that fails or disagrees fails the command; its
record is written with status "failed".
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from rich import box
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import kernels
from ..bench_records import measure_load
from ..data import scale_to_pm1
from ..errors import UserError, did_you_mean
from ..infer.engine import PackedEngine
from ..progress import progress_bar
from ..provenance import resolve_device
from . import convnet, mlp
from .models import frozen_float_model, int8_binary_layers
from .specs import LoadedModel, ModelSpec
from .timing import (check_arguments, check_kernels_usable, header, measuring, off_device, print_load, record,
                     select_names, time_model_passes)

SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (mlp.SPEC, *convnet.SPECS)}
BUDGET_S = 20.0  # seconds per variant for all timing rounds together; a slow variant gets one round


def spec_of(name: str) -> ModelSpec:
    if name not in SPECS:
        raise UserError(f"unknown --model {name!r}; choose {', '.join(SPECS)}{did_you_mean(name, SPECS)}")
    return SPECS[name]


def unavailable(spec: ModelSpec, device: str) -> dict[str, str | None]:
    """Variant -> why it cannot run on the device (None: it can)."""
    return {name: off_device(v.devices, device) for name, v in spec.variants.items()}


def runner(spec: ModelSpec, name: str, model: LoadedModel, torch_model: nn.Module, device: torch.device
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from one batch of 8-bit images (on the device) to predicted classes."""
    v = spec.variants[name]
    if v.engine:
        engine = PackedEngine(model.exported, device, first_layer=v.first_layer, hidden=v.hidden,
                              xnor_impl=v.xnor_impl)
        return lambda xb: engine.logits(xb).argmax(1)
    net = int8_binary_layers(torch_model) if v.int8_hidden else copy.deepcopy(torch_model)
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format
    net = net.to(device=device, dtype=v.dtype).to(memory_format=fmt)
    return lambda xb: net(scale_to_pm1(xb).to(v.dtype).contiguous(memory_format=fmt)).argmax(1)


def bench_model(model_name: str, run: Path | None = None, device: str = "auto", data_dir: Path | None = None,
                repeat: int = 20, images: int | None = None, results: Path = Path("results"), command: str = "",
                console: Console | None = None, names: list[str] | None = None, budget_s: float = BUDGET_S) -> dict:
    """The bench record of the named variants (default: all that run on the device)."""
    spec = spec_of(model_name)
    dev = resolve_device(device)
    if names is None:
        names = select_names("all", unavailable(spec, dev.type), "variant", "--variant")
    if dev.type == "cuda" and not kernels.available()["cuda"]:
        raise UserError("the CUDA kernels are not available on this machine, so there is nothing to bench on the GPU.")
    check_kernels_usable()
    model = spec.load_model(spec, run, results)
    data = spec.load_images(spec, data_dir, model.data_cfg, images or spec.images)
    x = data.x.to(dev)
    batch = spec.batch(dev.type, model.exported)
    torch_model = frozen_float_model(model.float_model) if isinstance(model.float_model, nn.Sequential) \
        else model.float_model
    if console is not None:
        console.print(f"bench {spec.name}: {len(x):,} images ({data.info['source']}); model "
                      f"{model.info['source'] or 'random weights'}; {dev.type}, batches of {batch:,}", highlight=False)
    variants: dict[str, dict] = {}
    for name, v in spec.variants.items():
        entry = {"label": v.label, "engine": v.engine, "first_layer": v.first_layer,
                 "xnor_impl": v.xnor_impl if v.engine else None, "exact": v.exact}
        if v.paper_row:
            entry["paper_row"] = v.paper_row
        if name not in names:
            why = off_device(v.devices, dev.type)
            entry["status"] = f"not run: {why}" if why else "not run: not selected"
        variants[name] = entry
    make = lambda name: runner(spec, name, model, torch_model, dev)  # noqa: E731
    progress = progress_bar(console)
    with progress or nullcontext(), measure_load(torch.get_num_threads(), on_cpu=dev.type == "cpu") as load:
        on_step = None
        if progress is not None:
            task = progress.add_task(f"{spec.name}", total=len(names) * (1 + repeat))
            on_step = lambda name: progress.update(task, advance=1, description=f"{spec.name}: {name}")  # noqa: E731
        predictions = time_model_passes(variants, make, x, batch, dev, repeat, budget_s, on_step)
    if spec.reference in predictions:
        reference, reference_note = predictions[spec.reference], f"the {spec.reference} variant's predictions"
    else:  # not selected (or failed): the float model once, untimed
        step = runner(spec, spec.reference, model, torch_model, dev)
        with measuring():
            reference = torch.cat([step(b) for b in x.split(batch)]).cpu()
        reference_note = f"the fp32 float model, run once untimed (the {spec.reference} variant was not timed)"
    targets = add_comparisons(spec, variants, predictions, reference, data.y, dev.type)
    return {
        **header(spec.name, command, dev, load.fields),
        "model": {"name": spec.name, "architecture": spec.architecture(spec, model),
                  "binary_weights": model.exported.binary_weights, **model.info},
        "data": data.info, "batch_size": batch, "repeat": repeat,
        "reference": {"variant": spec.reference, "predictions": reference_note},
        "variants": variants, "targets": targets,
    }


def add_comparisons(spec: ModelSpec, variants: dict, predictions: dict, reference: torch.Tensor,
                    labels: torch.Tensor | None, device: str) -> dict:
    """Errors, disagreements with the float model and speed-ups for the variants that ran; the targets."""
    ok = {name: e for name, e in variants.items() if e["status"] == "ok"}
    torch_ok = [name for name in ok if not spec.variants[name].engine]
    best_torch = min(torch_ok, key=lambda n: ok[n]["median_ms"]) if torch_ok else None
    for name, e in ok.items():
        pred = predictions[name]
        e["test_error_pct"] = None if labels is None else 100.0 * (pred != labels).sum().item() / len(labels)
        e[spec.differing_key] = int((pred != reference).sum())
        for key, ref in spec.ratios.items():
            e[key] = ok[ref]["median_ms"] / e["median_ms"] if ref in ok else None
        e["x_best_torch"] = ok[best_torch]["median_ms"] / e["median_ms"] if best_torch else None
    checked = [name for name in ok if spec.variants[name].exact]
    wrong = [name for name in checked if ok[name][spec.differing_key]]
    out: dict = {"exact_variants_same_predictions": not wrong, "exact_variants_checked": checked,
                 "exact_variants_differing": wrong, "best_torch": best_torch}
    engines = [name for name in ok if spec.variants[name].packed]
    if engines:
        fastest = min(engines, key=lambda n: ok[n]["median_ms"])
        out.update(fastest_engine=fastest, fastest_engine_images_per_s=ok[fastest]["images_per_s"],
                   fastest_engine_x_torch=ok[fastest].get("x_torch"),
                   fastest_engine_x_best_torch=ok[fastest]["x_best_torch"])
    if spec.extra_targets:
        out.update(spec.extra_targets(ok, device))
    return out


# ---------------------------------------------------------------------------- output

def _cell(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def print_model_table(result: dict, console: Console) -> None:
    """The variants that ran, one line each (fits 80 columns), their legend and a few sentences."""
    spec = SPECS.get(result["kind"])
    data, model = result["data"], result["model"]
    differing_key = spec.differing_key if spec else "predictions_differing_from_float"
    table = Table(title=f"{spec.title if spec else result['kind']} ({model['architecture']}), {data['images']:,} "
                        f"images, {result['device']['hardware']}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    first_ratio = next(iter(spec.ratios), None) if spec else None
    columns = ["variant", "ms", "images/s"] + ([first_ratio.replace("x_", "x ")] if first_ratio else []) + \
        ["x best torch", "error %", "differ"]
    for col in columns:
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    ran = {name: e for name, e in result["variants"].items() if e["status"] == "ok"}
    for name, e in ran.items():
        differ = e[differing_key]
        cells = [name, f"{e['median_ms']:.1f}", f"{e['images_per_s']:,.0f}"]
        if first_ratio:
            cells.append(_cell(e.get(first_ratio), ".2f"))
        cells += [_cell(e["x_best_torch"], ".2f"), _cell(e["test_error_pct"], ".2f"),
                  f"[bold red]{differ}[/]" if differ and e.get("exact", True) else str(differ)]
        table.add_row(*cells)
    console.print(table)
    for name, e in ran.items():
        row = f"{e['paper_row']} " if e.get("paper_row") else ""
        console.print(f"  {row}{name}: {e['label']}", highlight=False)
    console.print(f"'differ': predictions other than the fp32 float model's ({result['reference']['predictions']}).",
                  highlight=False)
    for name, e in result["variants"].items():
        if e["status"].startswith("failed"):
            console.print(f"[bold red]{name} failed[/]: {e['status'][len('failed: '):]}", highlight=False)
    console.print(f"model: {model['source'] or 'none recorded'}; weights {model['weights']}; data: {data['source']}",
                  highlight=False)
    t = result["targets"]
    if t.get("fastest_engine"):
        vs = f"{t['fastest_engine_x_best_torch']:.2f}x the best torch variant ({t['best_torch']})" \
            if t.get("fastest_engine_x_best_torch") else "no torch variant timed"
        console.print(f"fastest packed engine: {t['fastest_engine']}, {t['fastest_engine_images_per_s']:,.0f} "
                      f"images/s, {vs}.", highlight=False)
    if "paper_b_x_a" in t:
        console.print(f"paper: (b) {t['paper_b_x_a']}x (a) on a GTX 750" +
                      (f"; here {t['b_x_a']:.2f}x." if "b_x_a" in t else "."), highlight=False)
    print_load(result, console)


def failure(result: dict, spec: ModelSpec) -> str | None:
    """Why the bench failed (one sentence without its final period), or None."""
    failed = [n for n, e in result["variants"].items() if e["status"].startswith("failed")]
    wrong = result["targets"]["exact_variants_differing"]
    parts = []
    if wrong:
        parts.append(f"{', '.join(wrong)} predicted other classes than the fp32 float model, so a kernel is wrong")
    if failed:
        parts.append(f"{', '.join(failed)} failed ({result['variants'][failed[0]]['status'][len('failed: '):]})")
    return "; ".join(parts) or None


def run_model(model: str, run: Path | None, device: str, data_dir: Path | None, repeat: int, out: Path,
              command: str, console: Console, variants: str = "all", images: int | None = None) -> Path:
    """The ``bnnctl bench --model ...`` command: bench, print, record; an error when a variant failed or an
    exact variant predicted other classes than the float model."""
    spec = spec_of(model)
    if images is not None and not spec.images_option:
        others = [s.name for s in SPECS.values() if s.images_option]
        raise UserError(f"--images applies to {' and '.join(others)}; {model} always runs its "
                        f"{spec.images:,} test images.")
    check_arguments(Path(out), repeat, {"images": images})
    names = select_names(variants, unavailable(spec, resolve_device(device).type), "variant", "--variant")
    result = bench_model(model, run, device, data_dir, repeat, images, command=command, console=console,
                         names=names)
    print_model_table(result, console)
    problem = failure(result, spec)
    path = record(result, out, problem)
    console.print(f"recorded {path}", highlight=False, soft_wrap=True)
    if problem:
        raise UserError(f"{problem} (recorded as failed in {path}).")
    return path


__all__ = ["SPECS", "BUDGET_S", "bench_model", "add_comparisons", "print_model_table", "run_model",
           "runner", "spec_of"]
