"""Step-time benchmarks: a method's training step against plain fine-tuning's, in one run.

Models are timed in turns (A, B, A, B, …) on the same batch, so that a busy machine slows all
of them alike, and the median over rounds is reported. Used by the scripts in ``benchmarks/``,
which share their command-line options (:func:`step_parser`), set-up and report through this
module.
"""
from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from tlgates.backbones import TORCHVISION_ARCHS, Backbone, tiny_resnet, torchvision_resnet
from tlgates.methods import TransferModel
from tlgates.train import training_step


def step_times(models: dict[str, TransferModel], x: torch.Tensor, y: torch.Tensor, *,
               rounds: int = 7, steps: int = 5, warmup: int = 2,
               baseline: str = "finetune") -> pd.DataFrame:
    """Median seconds per training step of each model, and its ratio to ``baseline``'s.

    Each model is moved to the batch's device and trains with its own parameter groups (SGD,
    lr 0.01) on the batch ``(x, y)``; one round times ``steps`` steps of every model in turn.
    """
    if baseline not in models:
        raise ValueError(f"baseline must be one of the models ({', '.join(models)}), "
                         f"got {baseline!r}")
    optimizers = {}
    for name, model in models.items():
        model.to(x.device).train()
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


def step_parser(description: str, *, rounds: int = 9,
                size_help: str = "image side in pixels") -> argparse.ArgumentParser:
    """The options every step-time script takes: ``--arch --size --batch-size --classes
    --rounds --steps --device --threads``; a script adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--arch", default="tiny", choices=("tiny",) + TORCHVISION_ARCHS)
    parser.add_argument("--size", type=int, default=32, help=size_help)
    parser.add_argument("--batch-size", type=int, default=16, help="training batch")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    return parser


def prepare(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, seed torch with 0 and return the ``--device``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def random_source(arch: str) -> Backbone:
    """A randomly initialised source network (step times do not depend on the weights)."""
    return (tiny_resnet() if arch == "tiny" else torchvision_resnet(arch)).eval()


def random_batch(args: argparse.Namespace, device: torch.device,
                 num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of ``--batch-size`` random ``--size``² images and labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.size, args.size, generator=g)
    y = torch.randint(0, num_classes or args.classes, (args.batch_size,), generator=g)
    return x.to(device), y.to(device)


def setting(args: argparse.Namespace, device: torch.device, what: str | None = None) -> str:
    """Where a benchmark ran, for its report: network, image size, batch, device, threads."""
    what = what or f"{args.arch}, {args.size}×{args.size}"
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    return f"{what}, batch {args.batch_size}, {device}{threads}"


def report(table: pd.DataFrame, where: str, rounds: int, *, row: str, label: str,
           target: float) -> float:
    """Print the step-time table and whether ``row`` keeps to ``target`` (a ratio to
    fine-tuning); return that ratio."""
    print(f"Training step, median over {rounds} interleaved rounds ({where}):")
    print(table.to_string())
    ratio = float(table.loc[row, "ratio to finetune"])
    verdict = "within" if ratio <= target else "ABOVE"
    print(f"{label} costs {ratio:.2f}× a fine-tuning step: {verdict} the {target:g}× target.")
    return ratio


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
