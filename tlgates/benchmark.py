"""Step-time benchmarks: a method's training step against plain fine-tuning's, in one run.

Models are timed in turns (A, B, A, B, …) on the same batch, so that a busy machine slows all
of them alike, and the median over rounds is reported. Used by the scripts in ``benchmarks/``.
"""
from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from tlgates.methods import TransferModel
from tlgates.train import training_step


def step_times(models: dict[str, TransferModel], x: torch.Tensor, y: torch.Tensor, *,
               rounds: int = 7, steps: int = 5, warmup: int = 2,
               baseline: str = "finetune") -> pd.DataFrame:
    """Median seconds per training step of each model, and its ratio to ``baseline``'s.

    Each model trains with its own parameter groups (SGD, lr 0.01) on the batch ``(x, y)``;
    one round times ``steps`` steps of every model in turn.
    """
    if baseline not in models:
        raise ValueError(f"baseline must be one of the models ({', '.join(models)}), "
                         f"got {baseline!r}")
    optimizers = {}
    for name, model in models.items():
        model.train()
        optimizers[name] = torch.optim.SGD(model.param_groups(0.01), lr=0.01, momentum=0.9)
        for _ in range(warmup):
            training_step(model, optimizers[name], x, y)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            _sync(x.device)
            start = time.perf_counter()
            for _ in range(steps):
                training_step(model, optimizers[name], x, y)
            _sync(x.device)
            times[name].append((time.perf_counter() - start) / steps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return pd.DataFrame({
        "ms per step": {n: 1000 * t for n, t in medians.items()},
        f"ratio to {baseline}": {n: t / medians[baseline] for n, t in medians.items()},
    }).round(3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
