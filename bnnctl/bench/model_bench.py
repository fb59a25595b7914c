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
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich import box
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import kernels
from ..bench_records import measure_load
from ..errors import UserError, did_you_mean
from ..infer.engine import make_engine
from ..infer.exported import UINT8_SCALE, ExportedModel
from ..infer.variants import ENGINE_VARIANTS
from ..progress import progress_bar
from ..provenance import resolve_device
from . import convnet, mlp
from .models import frozen_float_model, int8_binary_layers
from .specs import LoadedModel, ModelSpec, TestImages
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


def refusals(spec: ModelSpec, device: str, exported: ExportedModel) -> dict[str, str | None]:
    """Variant -> why it cannot run this model on the device (None: it can): the device, and for the engine's
    variants what the engine's table says of the model (e.g. a first layer that needs 8-bit scaled inputs)."""
    why = unavailable(spec, device)
    for name, v in spec.variants.items():
        if why[name] is None and v.engine:
            why[name] = ENGINE_VARIANTS[v.engine_variant].refusal(exported, device)
    return why


def choose_variants(spec: ModelSpec, names: list[str] | None, why: dict[str, str | None]) -> list[str]:
    """The variants to time: those named (each must run this model here), or all that can (None)."""
    if names is None:
        return [n for n in spec.variants if why[n] is None]
    refused = [n for n in names if why[n] is not None]
    if refused:
        raise UserError(f"--variant {refused[0]} cannot run here: {why[refused[0]]}; leave it out or choose another "
                        "variant.")
    return names


def engine_transform(exported: ExportedModel, transform: Callable[[torch.Tensor], torch.Tensor]
                     ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the engine variants get as the transform: None, the engine's own preprocessing (which the native plan
    applies to pixels natively), where the export carries a per-pixel table giving every byte the value
    ``transform`` gives it, as a deployed model runs; else ``transform`` itself."""
    carried = exported.preprocessing
    if carried is None or "table" not in carried.tensors or exported.input_encoding == UINT8_SCALE:
        return transform
    per_image = math.prod(exported.input_shape)
    probe = (torch.arange(-(-256 // per_image) * per_image) % 256).to(torch.uint8).view(-1, *exported.input_shape)
    try:
        same = torch.equal(transform(probe).float(), carried.transform(probe).float())
    except (RuntimeError, ValueError, TypeError):
        return transform
    return None if same else transform


def runner(spec: ModelSpec, name: str, model: LoadedModel, torch_model: nn.Module, device: torch.device,
           transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from one batch of 8-bit images (on the device) to predicted classes; ``transform`` is the
    model's own preprocessing of them (``TestImages.transform``)."""
    v = spec.variants[name]
    if v.engine:
        engine = make_engine(model.exported, device, v.engine_variant)
        own = engine_transform(model.exported, transform)
        return lambda xb: engine.logits(xb, own).argmax(1)
    net = int8_binary_layers(torch_model) if v.int8_hidden else copy.deepcopy(torch_model)
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format
    net = net.to(device=device, dtype=v.dtype).to(memory_format=fmt)
    return lambda xb: net(transform(xb).to(v.dtype).contiguous(memory_format=fmt)).argmax(1)


@dataclass
class Prepared:
    """A model bench ready to time: the model, its test images (with its own preprocessing) on the device, its
    frozen float model, the variants chosen and why the others cannot run."""
    spec: ModelSpec
    device: torch.device
    model: LoadedModel
    data: TestImages
    x: torch.Tensor
    torch_model: nn.Module
    names: list[str]
    why_not: dict[str, str | None]

    def step(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return runner(self.spec, name, self.model, self.torch_model, self.device, self.data.transform)

    def entries(self) -> dict[str, dict]:
        """Each variant's record entry: what it is, and for those not chosen why ("not run: ...")."""
        variants: dict[str, dict] = {}
        for name, v in self.spec.variants.items():
            entry = {"label": v.label, "engine": v.engine, "first_layer": v.first_layer,
                     "xnor_impl": v.xnor_impl if v.engine else None, "exact": v.exact}
            if v.paper_row:
                entry["paper_row"] = v.paper_row
            if name not in self.names:
                why = self.why_not[name]
                entry["status"] = f"not run: {why}" if why else "not run: not selected"
            variants[name] = entry
        return variants

    def model_section(self) -> dict:
        exported = self.model.exported
        return {"name": self.spec.name, "architecture": self.spec.architecture(self.spec, self.model),
                "binary_weights": exported.binary_weights,
                "packed_weight_bytes": sum(layer.weight_bits.numel() * 8 for layer in exported.layers),
                **self.model.info}


def prepare(model_name: str, run: Path | None, device: str, data_dir: Path | None, images: int | None,
            results: Path, names: list[str] | None) -> Prepared:
    """Load the model and its test images; choose the variants (``names``, or all that run the model here)."""
    spec = spec_of(model_name)
    dev = resolve_device(device)
    if dev.type == "cuda" and not kernels.available()["cuda"]:
        raise UserError("the CUDA kernels are not available on this machine, so there is nothing to bench on the GPU.")
    check_kernels_usable()
    model = spec.load_model(spec, run, results)
    why_not = refusals(spec, dev.type, model.exported)
    names = choose_variants(spec, names, why_not)
    data = spec.load_images(spec, data_dir, model.data_cfg, images or spec.images)
    torch_model = frozen_float_model(model.float_model) if isinstance(model.float_model, nn.Sequential) \
        else model.float_model
    return Prepared(spec, dev, model, data, data.x.to(dev), torch_model, names, why_not)


def bench_model(model_name: str, run: Path | None = None, device: str = "auto", data_dir: Path | None = None,
                repeat: int = 20, images: int | None = None, results: Path = Path("results"), command: str = "",
                console: Console | None = None, names: list[str] | None = None, budget_s: float = BUDGET_S) -> dict:
    """The bench record of the named variants (default: all that run the model on the device)."""
    p = prepare(model_name, run, device, data_dir, images, results, names)
    spec, dev, x = p.spec, p.device, p.x
    batch = spec.batch(dev.type, p.model.exported)
    if console is not None:
        console.print(f"bench {spec.name}: {len(x):,} images ({p.data.info['source']}); model "
                      f"{p.model.info['source'] or 'random weights'}; {dev.type}, batches of {batch:,}",
                      highlight=False)
    variants = p.entries()
    progress = progress_bar(console)
    with progress or nullcontext(), measure_load(torch.get_num_threads(), on_cpu=dev.type == "cpu") as load:
        on_step = None
        if progress is not None:
            task = progress.add_task(f"{spec.name}", total=len(p.names) * (1 + repeat))
            on_step = lambda name: progress.update(task, advance=1, description=f"{spec.name}: {name}")  # noqa: E731
        predictions = time_model_passes(variants, p.step, x, batch, dev, repeat, budget_s, on_step)
    if spec.reference in predictions:
        reference, reference_note = predictions[spec.reference], f"the {spec.reference} variant's predictions"
    else:  # not selected (or failed): the float model once, untimed
        step = p.step(spec.reference)
        with measuring():
            reference = torch.cat([step(b) for b in x.split(batch)]).cpu()
        reference_note = f"the fp32 float model, run once untimed (the {spec.reference} variant was not timed)"
    targets = add_comparisons(spec, variants, predictions, reference, p.data.y, dev.type)
    return {
        **header(spec.name, command, dev, load.fields),
        "model": p.model_section(), "data": p.data.info, "batch_size": batch, "repeat": repeat,
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


def model_arguments(model: str, device: str, out: Path, repeat: int, variants: str, images: int | None,
                    sizes: dict[str, int | None] | None = None) -> list[str] | None:
    """Refuse, before anything loads, what a model bench cannot use (one sentence each); the variants named
    (None for all: those that can run the model, once it is loaded)."""
    spec = spec_of(model)
    if images is not None and not spec.images_option:
        others = [s.name for s in SPECS.values() if s.images_option]
        raise UserError(f"--images applies to {' and '.join(others)}; {model} always runs its "
                        f"{spec.images:,} test images.")
    check_arguments(Path(out), repeat, {"images": images, **(sizes or {})})
    names = select_names(variants, unavailable(spec, resolve_device(device).type), "variant", "--variant")
    return None if variants.strip() == "all" else names


def run_model(model: str, run: Path | None, device: str, data_dir: Path | None, repeat: int, out: Path,
              command: str, console: Console, variants: str = "all", images: int | None = None) -> Path:
    """The ``bnnctl bench --model ...`` command: bench, print, record; an error when a variant failed or an
    exact variant predicted other classes than the float model."""
    spec = spec_of(model)
    names = model_arguments(model, device, out, repeat, variants, images)
    result = bench_model(model, run, device, data_dir, repeat, images, command=command, console=console,
                         names=names)
    print_model_table(result, console)
    problem = failure(result, spec)
    path = record(result, out, problem)
    console.print(f"recorded {path}", highlight=False, soft_wrap=True)
    if problem:
        raise UserError(f"{problem} (recorded as failed in {path}).")
    return path


__all__ = ["SPECS", "BUDGET_S", "Prepared", "bench_model", "add_comparisons", "choose_variants", "failure",
           "model_arguments", "prepare",
           "print_model_table", "refusals", "run_model", "runner", "spec_of"]
