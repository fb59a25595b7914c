"""The bnnctl command line: a thin layer over the modules that do the work.

Each command imports its module lazily so ``bnnctl --help`` stays fast (torch is imported only
once a command runs, after ``use_huge_pages``), and every error meant for the user (``UserError``)
becomes one red sentence and its exit code, never a traceback.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import sys

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from . import completion
from .allocator import use_huge_pages
from .errors import UserError, out_of_memory_as_failure
from .infer.variants import help_text as engine_variants_help


def _flags_as_flags(params: list) -> list:
    """The parameters, each flag (--fast, --version, --help, ...) without the '<bool>' type typer's help shows
    after it: a flag takes no value, so its help line shows none."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _flags_as_flags(super().get_params(ctx))


class _RecordingGroup(TyperGroup):
    """Sets the allocator up before any command imports torch, and keeps the arguments bnnctl was called
    with, for the records and for --nproc's relaunch."""

    def main(self, args=None, *rest, **kwargs):
        use_huge_pages()
        from .provenance import set_invocation
        set_invocation(sys.argv[1:] if args is None else list(args))
        return super().main(args, *rest, **kwargs)

    def get_params(self, ctx):
        return _flags_as_flags(super().get_params(ctx))


app = typer.Typer(cls=_RecordingGroup, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Binarized Neural Networks (Courbariaux et al., 2016): train, evaluate, benchmark, report.")
command = functools.partial(app.command, cls=_Command)
console = Console()
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__
        console.print(f"bnnctl {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="print bnnctl's version and exit")) -> None:
    """Binarized Neural Networks (Courbariaux et al., 2016): train, evaluate, benchmark, report."""


def without_option(args: list[str], option: str) -> list[str]:
    """args less ``option VALUE`` and ``option=VALUE``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with out_of_memory_as_failure("use a smaller model or problem size, or a machine with more memory"):
                return fn(*args, **kwargs)
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
    return wrapper


@command()
@user_errors
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/mnist.yaml",
                                  autocompletion=completion.recipes),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="override a recipe field: key.path=value (repeatable; bnnctl keys lists "
                                        "the keys)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda", autocompletion=completion.devices),
    data_dir: Optional[Path] = typer.Option(None, help="data root (default $BNNCTL_DATA, else ./data)"),
    runs_dir: Path = typer.Option(Path("runs"), help="runs go to RUNS_DIR/<recipe name>/<run id>/ (the committed "
                                                     "results/ changes only through bnnctl record)"),
    resume: Optional[Path] = typer.Option(None, help="continue this run directory from its last finished epoch"),
    seed: Optional[int] = typer.Option(None, help="override the recipe's seed"),
    run_id: Optional[str] = typer.Option(None, help="name of the run directory (default: date-time and seed)"),
    fast: bool = typer.Option(False, "--fast", help="switch on the fast.* options that pay off on this device "
                                                    "(--set wins over them)"),
    nproc: int = typer.Option(1, help="train as N processes on this machine (DDP through torchrun; one GPU each "
                                      "on CUDA); the recipe's batch is split across them"),
    max_restarts: int = typer.Option(0, help="with --nproc: when a process fails, restart all of them up to this "
                                             "many times; they continue from the run's last checkpoint"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="also write each epoch's losses, errors and LR "
                                                                  "for TensorBoard, into the run directory's "
                                                                  "tensorboard/ (needs pip install tensorboard)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved recipe (YAML), the run directory "
                                                          "and the model's size, then exit: nothing is written "
                                                          "or downloaded"),
):
    """Train a model from a recipe and record metrics, result and checkpoint."""
    if tensorboard:  # before anything starts, --nproc's processes included
        from .train.tensorboard_log import summary_writer_class
        summary_writer_class()
    if dry_run:
        from .report.dry_run import dry_run as show_dry_run
        show_dry_run(recipe=recipe, overrides=set_, device=device, data_dir=data_dir, runs_dir=runs_dir,
                     resume=resume, seed=seed, run_id=run_id, fast=fast, tensorboard=tensorboard, console=console)
        return
    if nproc != 1:
        from .provenance import command_line, invocation
        from .train.distributed import relaunch
        args = without_option(without_option(invocation(), "--nproc"), "--max-restarts")
        raise typer.Exit(relaunch(nproc, args, command_line(), max_restarts))
    if max_restarts != 0:
        raise UserError("--max-restarts restarts the processes of a --nproc run; give --nproc 2 or more, or drop it.")
    from .train.loop import run_training
    run_training(recipe=recipe, overrides=set_, device=device, data_dir=data_dir, runs_dir=runs_dir,
                 resume=resume, seed=seed, run_id=run_id, console=console, fast=fast, tensorboard=tensorboard)


@command("eval")
@user_errors
def eval_(
    run: Path = typer.Argument(..., help="run directory, best.pt, or a .bnnx export"),
    split: str = typer.Option("test", help="test | valid", autocompletion=completion.splits),
    engine: Optional[str] = typer.Option(None, help="float (simulated binary network) | xnor (bit-packed kernels); "
                                         "default: float for a run or best.pt, xnor for a .bnnx export",
                                         autocompletion=completion.engines),
    variant: Optional[str] = typer.Option(None, help="with --engine xnor, how the packed engine runs; "
                                          + engine_variants_help(), autocompletion=completion.engine_variants),
    device: str = typer.Option("auto", help="auto | cpu | cuda", autocompletion=completion.devices),
    data_dir: Optional[Path] = typer.Option(None, help="data root (default $BNNCTL_DATA, else ./data)"),
):
    """Test (or validation) error of a trained model; agrees with what training recorded."""
    from .infer.evaluate import run_eval
    run_eval(run=run, split=split, engine=engine, device=device, data_dir=data_dir, console=console, variant=variant)


@command()
@user_errors
def export(
    run: Path = typer.Argument(..., help="run directory or checkpoint file (best.pt)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="export file (default: model.bnnx beside best.pt)"),
    data_dir: Optional[Path] = typer.Option(None, help="data root holding the training images a fitted "
                                            "preprocessing (standardize, zca, gcn_lcn) is refitted on, to go in the "
                                            "file (default $BNNCTL_DATA, else ./data)"),
):
    """Write a deployable 1-bit model: packed weights, BN + sign folded into integer thresholds, and the input
    preprocessing, so that it runs on raw images alone."""
    from .infer.export import run_export
    run_export(run=run, out=out, console=console, data_dir=data_dir)


@command()
@user_errors
def bench(
    kernel: Optional[str] = typer.Option(None, help="the matrix-product bench's kernels: xnor | xnor-csa | xnor-paper "
                                         "| xnor-tc | baseline | cublas | bf16 | int8 | all (default; or a comma "
                                         "list; int8 runs on CPU only, the xnor-paper/-csa/-tc kernels on CUDA only)",
                                         autocompletion=completion.bench_kernels),
    model: Optional[str] = typer.Option(None, help="time a whole model on its test images instead of one product: "
                                        "mnist-mlp (baseline, XNOR, bit-plane first layer, torch) | cifar10-convnet "
                                        "| svhn-convnet (the packed engine against torch fp32, channels-last, bf16)",
                                        autocompletion=completion.bench_models),
    variant: Optional[str] = typer.Option(None, help="with --model: the variants to time, a comma list or all "
                                          "(default: all that run on the device)",
                                          autocompletion=completion.bench_variants),
    m: Optional[int] = typer.Option(None, help="rows of A (default 8192 on a GPU, 1024 on CPU)"),
    n: Optional[int] = typer.Option(None, help="rows of B, i.e. columns of the product (default 8192 / 1024)"),
    k: Optional[int] = typer.Option(None, help="shared dimension (default 8192 / 4096)"),
    repeat: int = typer.Option(20, help="timed runs per kernel (at least 3; fewer for slow kernels past ~5 s); "
                                        "with --model, timed passes over the images per variant (while ~20 s last)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda", autocompletion=completion.devices),
    out: Path = typer.Option(Path("runs/bench"), help="folder the JSON record is written to (the committed "
                                                      "results/bench changes only through bnnctl record)"),
    popc_peak: Optional[float] = typer.Option(None, help="measured XOR+popcount ceiling in T binary-op/s of the "
                                              "device (GPU: tools/gpu_peaks, CUDA cores; CPU: tools/cpu_peaks), "
                                              "to report the XNOR kernels' share of it; on a CPU without it, a "
                                              "tools/cpu_peaks --json record of this CPU in --out is used"),
    run: Optional[Path] = typer.Option(None, help="with --model: run directory, best.pt or (mnist-mlp) .bnnx "
                                       "export (default: mnist-mlp the newest recorded under results/mnist*/, "
                                       "the ConvNets random weights)"),
    data_dir: Optional[Path] = typer.Option(None, help="with --model: data root holding MNIST/raw, "
                                            "cifar-10-batches-py or cifar10-jpeg.npz (the stand-in), or SVHN/"),
    images: Optional[int] = typer.Option(None, help="with --model cifar10-convnet | svhn-convnet: how many test "
                                         "images to time, the first N (default 10,000)"),
    batch: Optional[int] = typer.Option(None, help="with --model: the latency mode, N images per call (1: single-image "
                                        "latency), each call timed alone; median and 90th percentile per thread "
                                        "count, against torch and the memory floor (tools/cpu_peaks)"),
    threads: Optional[str] = typer.Option(None, help="with --batch: the CPU thread counts to time, a comma list "
                                          "(default: 1 and all cores)"),
):
    """Time the XNOR kernels against the paper's baseline, cuBLAS fp32 and bf16, or a whole model; record JSON."""
    from .bench import run as run_bench
    from .provenance import command_line
    run_bench(kernel=kernel, variant=variant, model=model, m=m, n=n, k=k, repeat=repeat, device=device, out=out,
              popc_peak=popc_peak, run_path=run, data_dir=data_dir, images=images, command=command_line(),
              console=console, batch=batch, threads=threads)


@command()
@user_errors
def recipes(directory: Optional[Path] = typer.Argument(None, help="folder of recipes (default: the shipped ones)")):
    """List the recipes and what each reproduces."""
    from rich.table import Table

    from .recipe import list_recipes
    table = Table(title="recipes")
    for col in ("recipe", "reproduces", "paper test error %"):
        table.add_column(col)
    for info in list_recipes(directory):
        paper = "" if info.paper_error is None else f"{info.paper_error:.2f}"
        table.add_row(str(info.path.name), info.reproduces, paper)
    console.print(table)


@command()
@user_errors
def keys(word: Optional[str] = typer.Argument(None, help="only the keys with WORD in their name or help, e.g. "
                                                         "optimizer, or shorten: the keys that shorten a run")):
    """List every recipe key (for --set and recipe files): what it takes, its default and what it does."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from .recipe import flat_schema
    shown = {key: field for key, field in flat_schema().items()
             if word is None or word.lower() in f"{key} {field.help}".lower()}
    if not shown:
        raise UserError(f"no recipe key has {word!r} in its name or help; bnnctl keys lists them all.")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("key", "takes", "default"):
        table.add_column(column, no_wrap=True)
    table.add_column("help")
    for key, field in shown.items():
        table.add_row(*map(Text, (key, field.type_text(), field.default_text(), field.help)))  # no markup
    # A pipe or a file gets whole lines, not an 80-column squeeze.
    wide = console if console.is_terminal else Console(file=console.file, width=max(console.width, 200))
    wide.print(table, highlight=False)


@command()
@user_errors
def summary(recipe: str = typer.Argument(..., help="recipe file, or a shipped recipe's name, e.g. mnist",
                                         autocompletion=completion.recipes)):
    """Per-layer table of a recipe's model: output shape, weight bits (binary vs float32), MACs per image."""
    from .report.summary import render, summarize
    render(summarize(recipe), console)


@command()
@user_errors
def report(
    results: Path = typer.Option(Path("results"), help="the recorded runs and benchmarks to report"),
    out: Path = typer.Option(Path("results/report"), help="folder for REPORT.md, the CSVs and the figures"),
    recipes_dir: Optional[Path] = typer.Option(None, "--recipes", help="recipes whose models the memory and "
                                               "energy table describes (default: the shipped ones)"),
):
    """Regenerate the paper's tables and figures from what is recorded, the paper's numbers beside ours."""
    from .report import run_report
    run_report(results=results, out=out, recipes=recipes_dir, console=console)



@command()
@user_errors
def record(
    paths: List[Path] = typer.Argument(..., help="run folders (under runs/) or bench records (runs/bench/*.json)"),
    results: Path = typer.Option(Path("results"), help="the committed record to add them to"),
):
    """Add finished runs or bench records to the committed record (results/); never replaces what is there."""
    from .record import record as record_
    for target in record_(paths, results):
        console.print(f"recorded {target}", highlight=False)


@command("runs")
@user_errors
def runs_(folders: Optional[List[Path]] = typer.Argument(None, help="folders of runs (default: runs and results, "
                                                                    "those that exist)")):
    """List the runs: recipe, status, epochs, best-validation and test error, faithful to the shipped recipe or not."""
    from .report.listing import runs_tables
    chosen = folders or [p for p in (Path("runs"), Path("results")) if p.is_dir()]
    missing = [p for p in chosen if not p.is_dir()]
    if missing:
        raise UserError(f"{missing[0]} is not a folder of runs.")
    tables, notes = runs_tables(chosen)
    for table in tables:
        console.print(table)
    for path, why in notes.sorted():
        console.print(f"[yellow]skipped:[/] {path}: {why}", highlight=False)
