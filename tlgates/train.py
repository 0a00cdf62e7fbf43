"""One training loop for every method: seeded, device-agnostic, with a progress bar.

``fit`` trains any :class:`~tlgates.methods.TransferModel` on a data set. It minimises the sum
of the model's ``loss_terms``, takes its ``param_groups`` (SGD with momentum and a one-cycle
schedule by default), evaluates on a validation set each epoch and stores the model's
``epoch_record`` (gate statistics on that set) and ``training_record`` (what the training steps
gathered, such as DELTA's Ω) in the :class:`History`.

The recipe (:class:`TrainConfig`) decides the numbers; :class:`Execution` only how fast they
come: DataLoader workers, mixed precision and channels-last on CUDA, ``SyncBatchNorm``. Under
``torchrun`` the same ``fit`` trains with DistributedDataParallel (:mod:`tlgates.distributed`).
"""
from __future__ import annotations

import contextlib
import functools
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from tlgates import distributed
from tlgates.data import ImageSubset, unaugmented
from tlgates.methods.base import TransferModel

SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop shared by all methods.

    The defaults are what the notebooks and the command line use: SGD with momentum and a
    one-cycle schedule peaking at ``lr`` (it beat a cosine schedule by 5 points on the digits).

    ``momentum`` is SGD's momentum. Under the one-cycle schedule it moves against the learning
    rate, from ``momentum + momentum_cycle`` at the start down to ``momentum − momentum_cycle``
    at the peak rate and back (the default 0.95 → 0.85 → 0.95 is PyTorch's ``OneCycleLR``
    and fastai's); ``momentum_cycle=0`` keeps it fixed. The other schedules keep it fixed.
    """

    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 16
    momentum: float = 0.9
    momentum_cycle: float = 0.05
    schedule: str = "onecycle"
    augment: bool = True
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs must be an integer ≥ 1, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 10):
            raise ValueError(f"lr must be a number in (0, 10], got {self.lr!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 <= self.momentum_cycle <= min(self.momentum, 1 - self.momentum) or (
                self.momentum_cycle > 0 and self.momentum + self.momentum_cycle >= 1):
            raise ValueError(
                f"momentum_cycle must be in [0, {min(self.momentum, 1 - self.momentum):g}) "
                f"so that momentum ± momentum_cycle stays in [0, 1) (momentum="
                f"{self.momentum!r}), got {self.momentum_cycle!r}; 0 keeps momentum fixed")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                             f"got {self.schedule!r}")


@dataclass(frozen=True)
class Execution:
    """How the loop runs on its device; none of it is part of the recipe.

    Args:
        workers: DataLoader worker processes that decode and augment the images (0: in the
            training process, the default: the in-memory 32×32 sets need none, and workers
            hang on some laptops).
        amp: autocast to bfloat16 (float16 with a gradient scaler where bfloat16 is not
            supported); ``None``: on CUDA only.
        sync_batchnorm: BatchNorm statistics over the global batch of all processes
            (``SyncBatchNorm``; CUDA under torchrun only).

    On CUDA the loop also keeps model and images channels-last, copies batches from pinned
    memory without blocking, and reads nothing back from the GPU during an epoch: the NaN/inf
    guard runs on the device (a gradient scaler finds a step's non-finite gradients and the
    fused SGD kernel skips it) and the logged terms are summed there, both read once at the end
    of the epoch. Elsewhere autocast means bfloat16 and the guard reads the loss every step.
    """

    workers: int = 0
    amp: bool | None = None
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.workers, int) and self.workers >= 0):
            raise ValueError(f"workers must be an integer ≥ 0, got {self.workers!r}")
        if self.amp not in (None, True, False):
            raise ValueError(f"amp must be True, False or None (on CUDA only), "
                             f"got {self.amp!r}")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype to autocast to on ``device``, or ``None`` for full precision."""
        if not (self.amp if self.amp is not None else device.type == "cuda"):
            return None
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16


@dataclass
class History:
    """What happened during ``fit``: one row per completed epoch.

    Each row holds ``epoch``, ``loss`` and every loss term (means over the epoch), ``lr``,
    ``seconds`` (cumulative), whatever the model's ``training_record`` returned, and, when a
    validation set was given, ``val_acc`` and whatever the model's ``epoch_record`` returned.
    ``interrupted`` is true when training stopped early (KeyboardInterrupt or a stop request);
    the rows then cover the completed epochs only.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Evaluation:
    """Predictions of a model on a data set, with what it decided for each example and the
    model's :meth:`~tlgates.methods.TransferModel.decision_summary` of it."""

    accuracy: float
    logits: torch.Tensor
    y: torch.Tensor
    decisions: dict[str, torch.Tensor]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


def default_device() -> torch.device:
    """CUDA if available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in ``[-max_shift, max_shift]``.

    Vacated pixels are zero (the background of both glyphs and digits).
    """
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = torch.nn.functional.pad(x, [max_shift] * 4)
    rows = (torch.arange(h) + max_shift - shifts[:, :1]).to(x.device)  # (n, h)
    cols = (torch.arange(w) + max_shift - shifts[:, 1:]).to(x.device)  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate(model: TransferModel, dataset: Dataset, *, batch_size: int = 64,
             device: torch.device | str | None = None, seed: int = 0,
             workers: int = 0) -> Evaluation:
    """Accuracy, logits and per-example decisions of ``model`` (in eval mode) on ``dataset``.

    Evaluation never changes what follows it: it runs on a fork of the global random state,
    seeded with ``seed`` (for methods that sample at evaluation, such as SpotTune with
    ``sample_at_eval``), and the state is restored afterwards. Under torchrun every process
    evaluates every ``world_size``-th example and all get the whole result back, in order:
    each example is counted once. ``workers``: DataLoader workers that read the images.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    indices = list(range(distributed.rank(), len(dataset), distributed.world_size()))
    part = dataset if distributed.world_size() == 1 else Subset(dataset, indices)
    logits, labels, decisions = [], [], {}
    forked = [device] if device.type in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=forked, device_type=device.type if forked else "cuda"):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        for x, y in _loader(part, device, batch_size=batch_size, workers=workers,
                            generator=torch.Generator()):
            logits.append(model(_to(x, device)).float().cpu())
            labels.append(y)
            for name, value in model.last_decisions.items():
                decisions.setdefault(name, []).append(value.detach().cpu())
    local = (torch.tensor(indices, dtype=torch.long), torch.cat(logits), torch.cat(labels),
             {name: torch.cat(parts) for name, parts in decisions.items()}) if logits else None
    logits_all, y_all, gathered = _in_order(
        [part for part in distributed.gather(local) if part is not None])
    accuracy = (logits_all.argmax(1) == y_all).float().mean().item()
    summary = model.decision_summary(gathered) if gathered else {}
    return Evaluation(accuracy, logits_all, y_all, gathered, summary)


def _in_order(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                dict[str, torch.Tensor]]]
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Each process's (indices, logits, labels, decisions), put together in index order."""
    if len(parts) == 1:
        return parts[0][1:]
    order = torch.cat([p[0] for p in parts]).argsort()
    logits = torch.cat([p[1] for p in parts])[order]
    labels = torch.cat([p[2] for p in parts])[order]
    decisions = {name: torch.cat([p[3][name] for p in parts])[order] for name in parts[0][3]}
    return logits, labels, decisions


def _loader(dataset: Dataset, device: torch.device, *, workers: int,
            generator: torch.Generator, batch_size: int = 1,
            batch_sampler: Sampler | None = None,
            worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """A DataLoader with ``workers`` processes (kept between epochs), pinned memory on CUDA."""
    return DataLoader(dataset, batch_size=batch_size, batch_sampler=batch_sampler,
                      generator=generator, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=worker_init_fn)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``: on CUDA copied without blocking, channels-last when 4-D."""
    if device.type != "cuda":
        return x.to(device)
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def path_accuracies(model: TransferModel, dataset: Dataset, *,
                    batch_size: int = 64) -> pd.DataFrame:
    """Accuracy on ``dataset`` with the learned decisions, and with every decision forced to
    each path (``model.forcing``; the same trained weights): what each path is worth alone."""
    rows = []
    for label, path in (("learned", None), ("all pre-trained", "pretrained"),
                        ("all fine-tuned", "finetuned")):
        with model.forcing(path):
            rows.append({"decisions": label,
                         "accuracy": evaluate(model, dataset, batch_size=batch_size).accuracy})
    return pd.DataFrame(rows).set_index("decisions")


def training_step(model: TransferModel, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, *, where: str = "",
                  loss_terms: Callable[..., dict[str, torch.Tensor]] | None = None,
                  autocast: Callable[[], contextlib.AbstractContextManager] = (
                      contextlib.nullcontext),
                  scaler: torch.amp.GradScaler | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on the sum of the model's loss terms; returns (loss, terms).

    ``loss_terms`` computes the terms (default ``model.loss_terms``; under DDP the wrapper's
    forward), inside ``autocast()``.

    Without a ``scaler``, raises ``FloatingPointError`` before touching the weights if the loss
    is NaN or infinite. With one (``torch.amp.GradScaler``: the loop's on CUDA, scaling a
    float16 loss or, at scale 1, none) nothing is read back from the device: a step whose
    gradients are not finite is skipped there (by a fused optimizer, without a host
    synchronisation; under DDP the same on every process, as the gradients are the averaged
    ones), and the caller reads the loss's finiteness when it likes.
    """
    with autocast():
        terms = (loss_terms or model.loss_terms)(x, y)
        loss = sum(terms.values())
    if scaler is None and not math.isfinite(loss.item()):
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        lr = optimizer.param_groups[-1]["lr"]
        raise FloatingPointError(f"the loss became {loss.item()} {where}({values}); lower the "
                                 f"learning rate (lr={lr:.4g}) or the regularisation strength")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss, terms


class EvenBatches(Sampler[list[int]]):
    """Each epoch, a random permutation of ``size`` examples cut into ``ceil(size /
    batch_size)`` batches whose sizes differ by at most one.

    A plain loader ends each epoch with the remainder: 50 images in batches of 16 leave a batch
    of 2, and BatchNorm in training mode normalises it with the statistics of 2 images. On the
    digits that cost fine-tuning about 4 points at 5 labels per class and 13 at 2 (5 seeds:
    84.8 % against 88.5–88.9 % with batches of 10 or 25). Cut evenly, 50 images make batches
    of 13, 13, 12 and 12, in as many steps as before.
    """

    def __init__(self, size: int, batch_size: int, generator: torch.Generator) -> None:
        self.size, self.batch_size, self.generator = size, batch_size, generator

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=self.generator)
        batches = [batch.tolist() for batch in torch.tensor_split(order, len(self))]
        if distributed.world_size() > 1:  # every process draws the same order: its part
            return iter([distributed.shard(batch) for batch in batches])
        return iter(batches)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
               total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        cycle = config.momentum_cycle
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps, cycle_momentum=cycle > 0,
            base_momentum=round(config.momentum - cycle, 12),
            max_momentum=round(config.momentum + cycle, 12))
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _summable(value: torch.Tensor) -> torch.Tensor:
    """A loss term, detached, in float64 for summing over an epoch (on the CPU for MPS, which
    has no float64)."""
    value = value.detach()
    return (value.cpu() if value.device.type == "mps" else value).double()


def _epoch_totals(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """The epoch's sums, added over the processes and read back at once."""
    if not sums:
        return {}
    totals = distributed.all_sum(torch.stack(list(sums.values())))
    return dict(zip(sums, totals.tolist()))


def _seed_worker(rank: int, worker_id: int) -> None:
    """Seed a DataLoader worker of process ``rank`` apart from the other processes' workers
    (the loader seeds worker ``i`` with its base seed + i, the same on every process)."""
    seed = (torch.utils.data.get_worker_info().seed
            + rank * distributed.RANK_SEED_STRIDE) % 2 ** 63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def fit(model: TransferModel, train: Dataset, val: Dataset | None = None,
        config: TrainConfig = TrainConfig(), *, seed: int = 0,
        device: torch.device | str | None = None, progress: bool = True,
        on_epoch: Callable[[History], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        execution: Execution = Execution(), val_every: int = 1) -> History:
    """Train ``model`` on ``train``; return the per-epoch :class:`History`.

    Args:
        model: any method's model; it is moved to ``device`` and trained in place.
        train: the training set (``(x, y)`` pairs). An :class:`~tlgates.data.ImageSubset` that
            augments its images gets no pixel shift from the loop (``config.augment``).
        val: evaluated after every ``val_every``-th epoch and the last (``val_acc`` and the
            model's records), if given.
        config: loop settings (:class:`TrainConfig`).
        seed: seeds shuffling, augmentation and any sampling inside the model.
        device: default :func:`default_device`; under torchrun, this process's GPU or the CPU.
        progress: show a ``tqdm.auto`` bar (a widget in Jupyter, text in a terminal).
        on_epoch: called with the history after each epoch (live curves).
        should_stop: polled after every step; returning True stops training like an interrupt.
        execution: workers, mixed precision, SyncBatchNorm (:class:`Execution`).

    Under torchrun (several processes) every process draws the same batches of
    ``config.batch_size`` examples and trains on its part of each (:func:`distributed.shard`),
    through DistributedDataParallel; the model's ``on_fit_start`` runs on rank 0 first (its
    caches then serve the others) and DDP gives every process rank 0's weights and buffers;
    augmentation and sampling noise differ between processes.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the message says when and which
            term); the model keeps the weights of the step before. On CUDA the check is read
            at the end of the epoch: the steps with a non-finite loss were skipped.
        ValueError: a global batch smaller than the number of processes, or ``sync_batchnorm``
            without CUDA and torchrun.
    """
    device = distributed.setup(device) or (
        torch.device(device) if device is not None else default_device())
    model.to(device)
    with distributed.main_first():
        model.on_fit_start(unaugmented(train))
    rank, world = distributed.rank(), distributed.world_size()
    if execution.sync_batchnorm:
        if device.type != "cuda" or world == 1:
            raise ValueError("sync_batchnorm needs CUDA and several processes (torchrun); "
                             f"here: {device.type}, {world} process(es)")
        distributed.sync_batchnorm(model)
    on_device = device.type == "cuda"  # read nothing back from the GPU during an epoch
    if on_device:
        model.to(memory_format=torch.channels_last)
    seed_everything(seed + rank * distributed.RANK_SEED_STRIDE)
    generator = torch.Generator().manual_seed(seed)  # the batches: the same on every process
    noise = generator if world == 1 else torch.Generator().manual_seed(
        seed + rank * distributed.RANK_SEED_STRIDE)
    batches = EvenBatches(len(train), config.batch_size, generator)
    if len(train) // len(batches) < world:
        raise ValueError(f"batch_size: the smallest batch has {len(train) // len(batches)} "
                         f"examples, fewer than the {world} processes")
    loader = _loader(train, device, workers=execution.workers, generator=generator,
                     batch_sampler=batches, worker_init_fn=functools.partial(
                         _seed_worker, rank) if world > 1 else None)
    loss_terms = distributed.wrap(model, device) if world > 1 else model.loss_terms
    groups = model.param_groups(config.lr)
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                fused=True if on_device else None)
    dtype = execution.autocast_dtype(device)
    autocast = functools.partial(torch.autocast, device.type, dtype=dtype) if dtype \
        else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16 if dtype == torch.float16
                                  else 1.0) if on_device else None
    scheduler = _scheduler(optimizer, config, config.epochs * len(loader))
    shift = config.augment and not (isinstance(train, ImageSubset) and train.augments)
    history = History(config=asdict(config))
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc=type(model).__name__,
               disable=not progress or not distributed.is_main(), leave=False)
    try:
        for epoch in bar:
            model.on_epoch_start(epoch, config.epochs)
            model.train()
            sums: dict[str, torch.Tensor] = {}
            for step, (x, y) in enumerate(loader):
                x, y = _to(x, device), y.to(device, non_blocking=on_device)
                if shift:
                    x = random_shift(x, 2, noise)
                loss, terms = training_step(model, optimizer, x, y, loss_terms=loss_terms,
                                            where=f"at epoch {epoch}, step {step} ",
                                            autocast=autocast, scaler=scaler)
                scheduler.step()
                for name, value in {**terms, "loss": loss}.items():
                    sums[name] = sums[name] + _summable(value) if name in sums else \
                        _summable(value)
                if on_device:
                    sums["nonfinite"] = sums.get("nonfinite", 0) + (~torch.isfinite(
                        loss.detach())).double()
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt
            distributed.broadcast_buffers(model)  # evaluate and end with rank 0's statistics
            totals = _epoch_totals(sums)
            nonfinite = int(totals.pop("nonfinite", 0))
            if nonfinite:
                raise FloatingPointError(
                    f"the loss became NaN or infinite in {nonfinite} step(s) of epoch {epoch} "
                    "(skipped on the device: the model keeps the weights of the last finite "
                    f"step); lower the learning rate (lr={config.lr:.4g}) or the "
                    "regularisation strength")
            row: dict[str, Any] = {"epoch": epoch + 1}
            row.update({name: total / (len(loader) * world) for name, total in totals.items()})
            row["lr"] = optimizer.param_groups[-1]["lr"]
            row.update(model.training_record())
            if val is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == config.epochs):
                result = evaluate(model, val, batch_size=config.eval_batch_size, device=device,
                                  workers=execution.workers)
                row["val_acc"] = result.accuracy
                row.update(model.epoch_record(result.decisions, result.y))
            row["seconds"] = time.perf_counter() - start
            history.rows.append(row)
            bar.set_postfix({k: row[k] for k in ("loss", "val_acc") if k in row})
            if on_epoch is not None:
                on_epoch(history)
    except KeyboardInterrupt:
        history.interrupted = True
        warnings.warn(f"training stopped after {len(history)} complete epoch(s); the model "
                      "keeps the weights of its last step", stacklevel=2)
    finally:
        bar.close()
        model.eval()
    return history
