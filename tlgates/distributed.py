"""Several processes, one result: what the loop needs to train under ``torchrun`` with DDP.

Plain ``torch.distributed`` and :class:`~torch.nn.parallel.DistributedDataParallel`: nothing to
install, the gloo backend on CPUs (CI) and NCCL on GPUs. Launched by ``torchrun``
(``WORLD_SIZE`` > 1 in the environment), :func:`setup` joins the process group once; without
torchrun nothing here does anything, and one process trains as before.

What each piece is for (the training loop :func:`tlgates.train.fit` uses them):

- :func:`shard`: each process takes its part of every global batch, so the global batch and the
  number of steps are those of one process (the one-cycle schedule is unchanged).
- :class:`LossTerms`: DDP synchronises gradients only through the wrapper's ``forward``, so the
  wrapped module's ``forward`` returns the method's ``loss_terms``. (Calling
  ``ddp.module.loss_terms`` trains without error and silently leaves gradients unsynchronised.)
- :func:`gather`: per-example results of each process's shard of an evaluation set, put back
  together in order on every process: every example counted once.
- :func:`main_first`: rank 0 does something first (trains and caches the source model,
  computes DELTA's attention), the others then find it in the cache. DDP's construction
  broadcasts rank 0's parameters and buffers, so what is computed once is the same everywhere.
- :func:`sync_batchnorm`: ``SyncBatchNorm`` for the trainable path, on CUDA only.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tlgates.methods.base import Frozen, TransferModel

#: Rank r > 0 seeds its own noise (augmentation, Gumbel samples) with seed + r · this.
RANK_SEED_STRIDE = 1_000_003


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with several
    processes: ``WORLD_SIZE`` > 1 in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | str | None = None) -> torch.device | None:
    """Join the process group when :func:`launched` (once; later calls do nothing) and return
    this process's device: ``cuda:LOCAL_RANK`` (NCCL) when CUDA is there and ``device`` is not
    the CPU, else the CPU (gloo). Returns ``device`` unchanged when not launched."""
    if not launched():
        return None if device is None else torch.device(device)
    wanted = torch.device(device) if device is not None else None
    use_cuda = torch.cuda.is_available() and (wanted is None or wanted.type == "cuda")
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda \
        else torch.device("cpu")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return local


_alone = 0  # > 0 inside a main_first block: this process works by itself


def _group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def active() -> bool:
    """Whether a process group with more than one process is running, and this process is not
    working by itself in a :func:`main_first` block."""
    return _alone == 0 and _group()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process prints, writes files and shows progress bars (rank 0)."""
    return rank() == 0


def shard(batch: Sequence[int]) -> list[int]:
    """This process's part of a global batch of indices: ``world_size`` consecutive parts whose
    sizes differ by at most one (``torch.tensor_split``)."""
    parts = torch.tensor_split(torch.as_tensor(list(batch)), world_size())
    return parts[rank()].tolist()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others (which find its cache files).

    Inside the block each process works by itself: :func:`active` is false there, so a
    ``fit`` in it (training the glyph source) trains on one process, without DDP.
    """
    global _alone
    if not active():
        yield
        return
    main = is_main()
    if not main:
        dist.barrier()
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1
    if main:
        dist.barrier()


def gather(local: Any) -> list[Any]:
    """Every process's ``local`` object, in rank order (``[local]`` when not distributed)."""
    if not active():
        return [local]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over the processes (``values`` when not
    distributed)."""
    if active():
        values = values.clone()
        dist.all_reduce(values)
    return values


class LossTerms(nn.Module):
    """``forward(x, y)`` returns ``model.loss_terms(x, y)``: what DDP wraps, so that its
    ``forward`` sees the pass and synchronises the gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.loss_terms(x, y)


def wrap(model: TransferModel, device: torch.device) -> nn.Module:
    """``LossTerms(model)`` in DDP when distributed, else ``LossTerms(model)``.

    A method that leaves some trainable parameter without a gradient in some steps (GTN's
    backbone during its warm-up) says so with ``ddp_find_unused_parameters``.
    """
    terms = LossTerms(model)
    if not active():
        return terms
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        terms, device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=model.ddp_find_unused_parameters)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm's running statistics: DDP sends them
    before each forward, so after the last step each process holds those of its own part)."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with the BatchNorm layers of its trainable path turned into ``SyncBatchNorm``
    (statistics over the global batch; CUDA only). Frozen copies are left as they are: in eval
    mode they use their running statistics and need no synchronisation."""
    for name, child in model.named_children():
        if isinstance(child, Frozen):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            sync_batchnorm(child)
    return model


def teardown() -> None:
    """Leave the process group (after the last collective); nothing when not distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
