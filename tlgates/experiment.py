"""Run methods over seeds and labels-per-class, and report mean ± std on the test split.

Each seed draws its own K-shot training set and its own initialisation; the test split is fixed
and never used for choosing anything.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tlgates import cpu, distributed, runs
from tlgates.backbones import Backbone
from tlgates.data import TargetTask, load_target
from tlgates.methods import TransferModel, get_method
from tlgates.source import SourceModel, source_model, source_network
from tlgates.train import (
    Execution, History, TrainConfig, default_device, evaluate, fit, seed_everything,
)


@dataclass
class RunResult:
    """Test accuracies of one method with one setting, one per seed."""

    method: str
    target: str
    shots: int
    seeds: list[int]
    accuracies: list[float]
    seconds: float
    params: dict[str, Any]
    preset: str = "tlgates"
    threads: int = 1  # torch threads it trained with (on the CPU)
    cached: list[int] = field(default_factory=list)  # the seeds read from the run cache
    histories: list[History] = field(default_factory=list, repr=False)
    model: TransferModel | None = field(default=None, repr=False)  # the last seed's model
    task: TargetTask | None = field(default=None, repr=False)  # the last seed's task

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0

    def summary(self) -> str:
        spread = f" ± {self.std:.1%}" if len(self.accuracies) > 1 else ""
        recipe = "" if self.preset == "tlgates" else f", {self.preset} recipe"
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}"
        cached = f"; {len(self.cached)} of {len(self.seeds)} from the run cache" \
            if self.cached else ""
        return (f"{self.method} on {self.target}, {self.shots} per class{recipe}, "
                f"{len(self.seeds)} seed(s): {self.mean:.1%}{spread} "
                f"({self.seconds:.1f} s{threads}{cached})")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "shots": self.shots,
                "seeds": self.seeds, "accuracies": self.accuracies, "mean": self.mean,
                "std": self.std, "seconds": self.seconds, "preset": self.preset,
                "params": self.params, "threads": self.threads, "cached": self.cached}


def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be ≥ 1, got {seeds}")
        return list(range(seeds))
    return list(seeds)


def run_method(method: str, *, target: str = "digits", shots: int = 5,
               seeds: int | Iterable[int] = 3, config: TrainConfig = TrainConfig(),
               params: dict[str, Any] | None = None, preset: str = "tlgates",
               source: SourceModel | None = None, progress: bool = True,
               on_epoch: Callable[[History], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               curves: bool = True, backbone: Backbone | None = None,
               size: int | None = None, device: torch.device | str | None = None,
               execution: Execution = Execution(), threads: int | None = None,
               cache: bool = True, keep_model: bool = True, val_every: int = 1) -> RunResult:
    """Train ``method`` on ``target`` with ``shots`` labels per class, once per seed.

    ``params`` override the hyperparameters of the recipe ``preset`` (``"tlgates"``, the
    defaults, or ``"paper"``: see ``MethodSpec.deviation_table``). ``source`` is the glyph
    source model (loaded when ``None``); a method on another kind of source network (the row
    LSTM of ``ptu-rnn``) loads its own. Every argument is checked before any training starts.
    ``seeds`` is a count (seeds 0..n−1) or an explicit list. The result keeps the last seed's
    model (unless ``keep_model`` is false) and task for inspection. ``on_epoch`` and
    ``should_stop`` are passed to :func:`~tlgates.train.fit`. ``curves=False`` skips the
    per-epoch validation pass (validation accuracy and the records gathered on it), which is
    about half the cost of a 5-shot run, when only test accuracy matters; records from the
    training steps (DELTA's Ω) are kept. With curves, ``val_every=k`` validates after every
    k-th epoch and the last only (the dashboards' live curves).

    On the CPU training uses ``threads`` torch threads (default: tlgates' choice,
    :func:`tlgates.cpu.choose_threads`, whatever the launcher set). Each seed's run is read
    from the run cache (:mod:`tlgates.runs`) when exactly that run was trained before, and
    kept there otherwise; ``cache=False`` trains every seed again (and keeps the new runs).
    ``RunResult.cached`` says which seeds came from the cache.

    At full scale: ``backbone`` replaces the glyph source (e.g. ``torchvision_resnet("resnet50",
    weights=...)``); ``size`` streams a torchvision data set or ``folder:PATH`` at that many
    pixels, normalised as the backbone expects (``load_target``); ``device`` and
    ``execution`` (workers, mixed precision) go to :func:`~tlgates.train.fit`. Under torchrun
    every process runs this with the same arguments and gets the same result. None of these
    runs is cached.
    """
    spec = get_method(method)
    values = spec.check(params or {}, preset)
    seed_values = _seed_list(seeds)
    if backbone is not None and spec.source != "backbone":
        raise ValueError(f"backbone: method {method!r} starts from a {spec.source}, "
                         "not a ResNet backbone")
    if not (isinstance(val_every, int) and val_every >= 1):
        raise ValueError(f"val_every must be an integer ≥ 1, got {val_every!r}")
    threads = cpu.choose_threads() if threads is None else threads
    normalization = backbone.normalization if backbone is not None else None
    tasks = [load_target(target, shots=shots, seed=seed, size=size,
                         normalization=normalization) for seed in seed_values]
    device = distributed.setup(device) or torch.device(device or default_device())
    progress = progress and distributed.is_main()
    with distributed.main_first():  # rank 0 trains and caches the source; the others load it
        network = backbone if backbone is not None else source_network(
            spec.source, source, progress=progress)
    cacheable = runs.enabled() and backbone is None and size is None \
        and device.type == "cpu" and distributed.world_size() == 1
    result = RunResult(method, target, shots, seed_values, [], 0.0, values, preset,
                       threads=threads)
    curve_every = val_every if curves else None  # what a cached run's history must have
    with cpu.threads(threads):
        for seed, task in zip(seed_values, tasks):
            need_model = keep_model and seed == seed_values[-1]
            key = runs.run_key(method=method, target=target, shots=shots, seed=seed,
                               preset=preset, params=values, config=config,
                               execution=execution, source=network, threads=threads) \
                if cacheable else None
            run = runs.load(key, need_model=need_model, val_every=curve_every) \
                if key and cache else None
            seed_everything(seed)
            model = spec.build(network, task.num_classes, **values) \
                if run is None or need_model else None
            if run is None:
                start = time.perf_counter()
                history = fit(model, task.train, task.val if curves else None, config,
                              seed=seed, progress=progress, on_epoch=on_epoch,
                              should_stop=should_stop, device=device, execution=execution,
                              val_every=val_every)
                if history.interrupted:
                    result.histories.append(history)
                    break
                accuracy = evaluate(model, task.test, batch_size=config.eval_batch_size,
                                    workers=execution.workers).accuracy
                run = runs.CachedRun(accuracy, history, time.perf_counter() - start,
                                     model.state_dict() if need_model else None, curve_every)
                if key:
                    runs.save(key, run)
            else:
                if model is not None:
                    model.load_state_dict(run.state)
                    model.eval()
                if on_epoch is not None:
                    on_epoch(run.history)
                result.cached.append(seed)
            result.histories.append(run.history)
            result.accuracies.append(run.accuracy)
            result.seconds += run.seconds
            result.task = task
            if need_model:
                result.model = model
    return result


def compare(methods: Sequence[str], *, target: str = "digits", shots: Sequence[int] = (5,),
            seeds: int | Iterable[int] = 3, config: TrainConfig = TrainConfig(),
            params: dict[str, dict[str, Any]] | None = None, preset: str = "tlgates",
            source: SourceModel | None = None, progress: bool = True) -> pd.DataFrame:
    """Test accuracy of each method for each labels-per-class value and seed (long format).

    Only test accuracy is measured (no per-epoch validation pass); one progress bar counts
    the settings. Returns one row per (method, shots, seed) with columns ``method``,
    ``shots``, ``seed``, ``accuracy``, ``seconds`` (per seed) and ``cached`` (read from the run
    cache); see :func:`summarize`.
    """
    source = source if source is not None else source_model(progress=progress)
    seed_values = _seed_list(seeds)
    settings = [(k, name) for k in shots for name in methods]
    rows = []
    bar = tqdm(settings, desc="compare", disable=not progress)
    for k, name in bar:
        bar.set_postfix_str(f"{name}, {k} per class")
        result = run_method(name, target=target, shots=k, seeds=seed_values, config=config,
                            params=(params or {}).get(name), preset=preset, source=source,
                            progress=False, curves=False, keep_model=False)
        per_seed = result.seconds / len(result.seeds)
        rows += [{"method": name, "shots": k, "seed": s, "accuracy": a, "seconds": per_seed,
                  "cached": s in result.cached}
                 for s, a in zip(result.seeds, result.accuracies)]
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std of the test accuracy (in %) per method and labels-per-class."""
    grouped = frame.groupby(["method", "shots"], sort=False)["accuracy"]
    table = grouped.agg(["mean", "std", "count"]).mul([100, 100, 1]).round(1)
    return table.rename(columns={"mean": "accuracy %", "std": "± std", "count": "seeds"})


def deviation_frame(method: str) -> pd.DataFrame:
    """How ``method`` differs from its paper and official code, one row per difference:
    ``setting``, ``tlgates``, ``paper`` (the paper's or official code's way), ``origin`` (where
    that comes from), ``switch`` (the hyperparameter that selects it, or "—") and ``why``."""
    rows = [{"setting": d.setting, "tlgates": d.ours, "paper": d.paper, "origin": d.origin,
             "switch": d.switch or "—", "why": d.why}
            for d in get_method(method).deviation_table()]
    return pd.DataFrame(rows, columns=["setting", "tlgates", "paper", "origin", "switch", "why"])


def device_name() -> str:
    """A short description of where training runs (for notebook headers)."""
    device = default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    if device.type != "cpu":
        return device.type.upper()
    threads = cpu.choose_threads()
    return f"CPU, {threads} thread{'s' if threads != 1 else ''} (tlgates' choice for it now)"


def training_note() -> str:
    """Where the notebook trains and where its results may come from (notebook headers)."""
    if default_device().type != "cpu" or not runs.enabled():
        return f"training on {device_name()}; every run trains now"
    return (f"training on {device_name()}\n"
            f"runs trained before with the same settings, by any notebook, are read from the "
            f"run cache ({runs.folder()}); a summary says so (\"from the run cache\"), and "
            f"run_method(..., cache=False) trains again")
