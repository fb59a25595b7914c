"""Several processes, one run: DistributedDataParallel through torchrun.

``torchrun --nproc_per_node N -m bnnctl train RECIPE`` starts N copies of bnnctl. Each reads its
place from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and joins one process group: NCCL on CUDA, one GPU per process (cuda:LOCAL_RANK); gloo on the CPU.
``bnnctl train --nproc N`` is a shortcut that re-launches the same command through
``torch.distributed.run`` on this machine.

It is still the recipe's run, split across processes:

* every rank holds the whole dataset and draws the same permutation from the shared data-order
  generator; rank r trains on the r-th slice of each global batch, so ``train.batch_size`` stays
  the global batch and the number of steps per epoch and the LR schedule do not change;
* DDP averages the gradients, so each step follows the gradient of the global batch's mean loss;
  with ``fast.sync_bn`` the BatchNorm statistics are the global batch's as well, and the step is
  the one-process step up to floating-point order;
* dropout and stochastic binarization draw from a seed of their own on each rank;
* evaluation is sharded across ranks and the error counts are all-reduced;
* rank 0 alone creates the run directory and writes every file; the others learn its path by
  broadcast, and on ``--resume`` receive the checkpoint rank 0 read;
* with ``--max-restarts`` torchrun restarts the whole group after a fault, and the restarted group
  continues its run from the last checkpoint (``elastic``).
"""
from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from ..provenance import COMMAND_ENV

T = TypeVar("T")

# Set to 1, torchrun gives each (re)started group of workers a store of its own to meet through.
FRESH_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run; the default is a run of one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (the shares differ by at most one)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)


SINGLE = Ranks()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes, if any; (this rank, the device it trains on)."""
    if not launched_by_torchrun():
        return SINGLE, device
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(f"this node runs local rank {ranks.local_rank} but torch sees only "
                            f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node.")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return ranks, device


def finish(ranks: Ranks) -> None:
    """Wait for every rank after a run that ended well, so that none tears the group down while another
    still has a collective in flight (gloo then aborts that process: 'terminate called without an
    active exception', seen once in CI)."""
    if ranks.active and dist.is_initialized():
        dist.barrier()


def shutdown(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A seed of rank's own for dropout and stochastic binarization, independent across ranks and seeds.

    ``more`` (e.g. the epoch a run resumes from) gives further independent streams.
    """
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])


# ---------------------------------------------------------------------------- collectives

def broadcast_object(obj: T, ranks: Ranks) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ranks: Ranks) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ranks.active:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.active:
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers_(module: nn.Module, ranks: Ranks) -> None:
    """Give every rank rank 0's buffers (BN running statistics), which are what checkpoints hold."""
    if ranks.active:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def _try_on_main(ranks: Ranks, fn: Callable[[], T]) -> tuple[T | None, UserError | None]:
    """(value, None) or (None, the UserError) of ``fn()`` on rank 0; (None, None) elsewhere."""
    if not ranks.is_main:
        return None, None
    try:
        return fn(), None
    except UserError as e:
        return None, e


def on_main(ranks: Ranks, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only, its value broadcast; a UserError there is raised on every rank."""
    value, error = broadcast_object(_try_on_main(ranks, fn), ranks)
    if error is not None:
        raise error
    return value


def main_first(ranks: Ranks, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the others: rank 0 alone downloads data or fills caches."""
    if not ranks.active:
        return fn()
    value, error = _try_on_main(ranks, fn)
    error = broadcast_object(error, ranks)
    if error is not None:
        raise error
    return value if ranks.is_main else fn()


# ---------------------------------------------------------------------------- model wrapping

def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """The model DDP trains: gradients averaged across ranks during the backward pass.

    Buffers are not broadcast at every step (one collective less per step); the trainer gives
    every rank rank 0's BN statistics before each evaluation instead.
    """
    from torch.nn.parallel import DistributedDataParallel
    # torch 2.14 renamed broadcast_buffers; either way no buffers travel with each step.
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_buffer_sync)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on CUDA, CrossRankBatchNorm elsewhere.

    Only exact BatchNorm layers can be synchronised; a recipe with shift-based BN is refused rather
    than silently normalising with per-rank statistics.
    """
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = CrossRankBatchNorm.convert(model)
    synced = (nn.SyncBatchNorm, CrossRankBatchNorm)
    unsynced = [type(m).__name__ for m in model.modules() if hasattr(m, "running_mean") and not isinstance(m, synced)]
    if unsynced:
        raise UserError(f"fast.sync_bn synchronises exact BatchNorm only, but the model has {unsynced[0]} layers; "
                        f"set fast.sync_bn=false or model.norm=bn.")
    return model


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are the global batch's, for process groups on the CPU.

    torch's SyncBatchNorm runs on GPUs only. This one all-reduces the per-channel sums and sums of
    squares (one collective per layer, differentiable, so the backward pass sees the global batch
    too) and updates the running statistics exactly as BatchNorm does with the global batch. Its
    parameters and buffers are those of the layer it replaces, so checkpoints load into plain
    BatchNorm models.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        local_count = x.new_full((1,), x.numel() // channels)
        totals = all_reduce(torch.cat([x.sum(dims), x.square().sum(dims), local_count]))
        count = totals[-1]
        mean = totals[:channels] / count
        var = (totals[channels:2 * channels] / count - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1), factor)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every exact BatchNorm replaced, sharing its parameters and buffers."""
        if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
            return out
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module


# ---------------------------------------------------------------------------- launching

def relaunch(nproc: int, args: list[str], command: str, max_restarts: int = 0) -> int:
    """Run ``bnnctl ARGS`` as nproc processes through torch.distributed.run on this machine; its exit code.

    ``command`` is the user's own command line (with --nproc), which the workers record. When a worker
    fails, torchrun restarts them all up to ``max_restarts`` times; they continue the run (``elastic``).
    """
    if launched_by_torchrun():
        raise UserError("--nproc re-launches bnnctl through torchrun, but this process was already started by "
                        "torchrun; drop --nproc.")
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}.")
    if max_restarts < 0:
        raise UserError(f"--max-restarts must be 0 or more, got {max_restarts}.")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "bnnctl", *args]
    env = {**os.environ, COMMAND_ENV: command}
    if max_restarts > 0:
        env[FRESH_STORE_ENV] = "1"  # see elastic.check_store
    proc = subprocess.Popen(cmd, env=env)
    # Ctrl-C reaches the workers directly (same process group); they record the interrupted run
    # and exit, and this process only waits for them. A SIGTERM sent to this process alone goes on to
    # torchrun, which passes it to the workers (they record the run as interrupted too).
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
