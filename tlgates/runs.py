"""The run cache: a finished training run, kept under ``data/runs/`` and reused when asked again.

CPU training is deterministic: the same method, settings, seed, source network, thread count,
CPU kind and code give the same weights, bit for bit. The notebooks train many runs more than
once (fine-tuning at 5 labels per class, seeds 0–2, is in almost every one, and the comparison
notebook trains every method again), so :func:`~tlgates.experiment.run_method` keeps each
seed's run here and a later request for exactly that run reads it back instead of training.

A run's file is named by the digest of its :func:`run_key`, and holds the key itself, which is
compared in full when the file is read: a file made with anything different (another setting,
another source model, other code) is never used. A corrupt file is trained again with a
warning (:func:`tlgates.cache.load`). What is kept: the test accuracy, the training history,
the seconds the training took and, when the caller keeps the model, its weights (about 1–4 MB
a run); runs whose model was not kept take a few kB.

``run_method(..., cache=False)`` trains again and overwrites; ``$TLGATES_RUN_CACHE=off``
turns the cache off everywhere; deleting ``data/runs/`` empties it. The cache is used only
where training is deterministic: on the CPU, in one process, with the glyph source models.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlgates import cache, cpu
from tlgates.paths import data_dir
from tlgates.train import Execution, History, TrainConfig

VERSION = 1


@functools.cache
def code_version() -> str:
    """A digest of tlgates' own source files: any change to the code makes new keys."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(network: nn.Module) -> str:
    """A digest of ``network``'s weights and buffers (which source model a run started from)."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def enabled() -> bool:
    """Whether the run cache is on (``$TLGATES_RUN_CACHE`` is not ``off``)."""
    setting = os.environ.get("TLGATES_RUN_CACHE", "on").lower()
    if setting not in ("on", "off"):
        raise ValueError(f"TLGATES_RUN_CACHE must be 'on' or 'off', got {setting!r}")
    return setting == "on"


def run_key(*, method: str, target: str, shots: int, seed: int, preset: str,
            params: dict[str, Any], config: TrainConfig, execution: Execution,
            source: nn.Module, threads: int) -> dict[str, Any]:
    """Everything a CPU run's result depends on, as plain JSON values.

    Not the validation curves: evaluation never changes the training that follows it (it runs
    in eval mode on a fork of the random state), so a run trained with curves has the weights
    and test accuracy of the same run without them, and serves that request too."""
    return json.loads(json.dumps({
        "method": method, "target": target, "shots": shots, "seed": seed, "preset": preset,
        "params": params, "config": asdict(config),
        "execution": asdict(execution), "source": fingerprint(source), "threads": threads,
        "cpu": cpu.kind(), "torch": torch.__version__, "code": code_version()}, sort_keys=True))


def folder() -> Path:
    """Where the runs are kept: ``runs/`` in :func:`tlgates.paths.data_dir`."""
    path = data_dir() / "runs"
    path.mkdir(exist_ok=True)
    return path


def _path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return folder() / f"{key['method']}-{digest}.pt"


@dataclass
class CachedRun:
    """One seed's run as it was kept: what :class:`~tlgates.experiment.RunResult` needs."""

    accuracy: float
    history: History
    seconds: float
    state: dict[str, torch.Tensor] | None  # the model's weights, when they were kept
    val_every: int | None  # validated after every val_every-th epoch and the last; None: never

    def has_curves(self, val_every: int | None) -> bool:
        """Whether its history has the validation points that ``val_every`` asks for."""
        return val_every is None or self.val_every in (1, val_every)


def load(key: dict[str, Any], *, need_model: bool, val_every: int | None) -> CachedRun | None:
    """The run kept under ``key``, or ``None`` (never run, unreadable, or without the model
    weights that ``need_model`` asks for or the curves that ``val_every`` asks for)."""
    saved = cache.load(_path(key), version=VERSION, what=f"{key['method']} run",
                       rebuild="training it again", matches=lambda saved: saved["key"] == key)
    if saved is None:
        return None
    run = CachedRun(saved["accuracy"], History(**saved["history"]), saved["seconds"],
                    saved["state"], saved["val_every"])
    return run if run.has_curves(val_every) and not (need_model and run.state is None) else None


def save(key: dict[str, Any], run: CachedRun) -> None:
    """Keep ``run`` under ``key`` (written atomically; see :func:`tlgates.cache.save`)."""
    cache.save(_path(key), {"key": key, "accuracy": run.accuracy, "seconds": run.seconds,
                            "history": asdict(run.history), "state": run.state,
                            "val_every": run.val_every}, version=VERSION)
