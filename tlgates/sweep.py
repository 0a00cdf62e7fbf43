"""A resumable sweep: every (method, target, labels per class, seed), one JSON line each.

``python -m tlgates sweep --methods all --targets digits,mnist,textures --shots 1,2,5,10
--seeds 5 --out results/sweep.jsonl --jobs 2`` trains each combination once with
:func:`~tlgates.experiment.run_method` (test accuracy only) and appends its row to the file
the moment it finishes, so a killed sweep loses at most the runs in flight. Run the same command
again and it skips the rows already there. When every row is in, the file is rewritten in one
canonical order (sorted by method, target, shots, seed), so an interrupted-and-resumed sweep
and an uninterrupted one give the same rows in the same order; only their timings and the
provenance records differ.

The file holds two kinds of lines: ``{"kind": "provenance", ...}``, one per invocation (the
command, tlgates' version and git commit, torch, the device, the thread count, the date and the
training settings), and ``{"kind": "result", "method": ..., "target": ..., "shots": ...,
"seed": ..., "accuracy": ..., "seconds": ..., "params": {...}}``. The training settings
(``TrainConfig``, recipe, thread count) are the same for every row of a file: CPU training is
deterministic for a given thread count on a given kind of CPU, and :func:`recheck` re-runs rows
to show it. On another kind of CPU (another vendor or vector instruction set) floating-point
sums round differently and a run drifts as another seed would, so the provenance records the
CPU (:func:`tlgates.cpu.kind`) and a bit-for-bit comparison is meaningful only on the same kind.
"""
from __future__ import annotations

import datetime
import itertools
import json
import multiprocessing
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from tqdm.auto import tqdm

import tlgates
from tlgates import cpu
from tlgates.experiment import run_method
from tlgates.methods import get_method
from tlgates.source import source_network
from tlgates.train import TrainConfig

FORMAT = 1
KEY = ("method", "target", "shots", "seed")


class Setting(NamedTuple):
    """One row of a sweep."""

    method: str
    target: str
    shots: int
    seed: int


@dataclass(frozen=True)
class Sweep:
    """A results file: its rows (one per setting) and how it was made."""

    results: pd.DataFrame
    provenance: list[dict[str, Any]]

    @property
    def settings(self) -> dict[str, Any]:
        """The training settings shared by every row (config, preset, threads)."""
        return self.provenance[0]["settings"] if self.provenance else {}

    @property
    def made_here(self) -> bool:
        """Whether every invocation that made the file recorded this machine's kind of CPU
        (:func:`tlgates.cpu.kind`): only then can its rows be reproduced bit for bit here."""
        return bool(self.provenance) and all(
            record.get("cpu") == cpu.kind() for record in self.provenance)


def grid(methods: Sequence[str], targets: Sequence[str], shots: Sequence[int],
         seeds: int) -> list[Setting]:
    """Every setting, seed by seed: a sweep stopped early holds whole seeds of the map."""
    return [Setting(m, t, k, s) for s in range(seeds) for m in methods for t in targets
            for k in shots]


def training_settings(config: TrainConfig, preset: str, threads: int) -> dict[str, Any]:
    """What must be equal for two rows to belong in one file."""
    return {"config": asdict(config), "preset": preset, "threads": threads}


def _commit() -> str | None:
    """The git commit of the tlgates checkout (``+dirty`` with local changes), or None."""
    root = Path(tlgates.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def provenance(settings: dict[str, Any], command: str, jobs: int) -> dict[str, Any]:
    """How this invocation makes its rows."""
    return {"kind": "provenance", "format": FORMAT, "command": command,
            "tlgates": tlgates.__version__, "commit": _commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": _device(), "cpu": cpu.kind(),
            "threads": settings["threads"], "jobs": jobs,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings}


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of ``path``, and whether its last line was cut short (a killed write)."""
    records, lines = [], path.read_text().splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n") and line.startswith(
                    '{"kind": '):
                return records, True
            raise ValueError(f"{path} line {number} is not a JSON record; it is not a sweep "
                             "file, or it was edited. Pass another --out, or remove the line")
        if not isinstance(record, dict) or record.get("kind") not in ("provenance", "result"):
            raise ValueError(f"{path} line {number} is not a sweep record (no kind "
                             "'provenance' or 'result'); pass another --out")
        records.append(record)
    return records, False


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file (a cut-short last line, from a killed sweep, is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; make it with: python -m tlgates sweep "
                                f"... --out {path}")
    records, _ = _read_lines(path)
    made = [r for r in records if r["kind"] == "provenance"]
    for record in made:
        if record.get("format") != FORMAT:
            raise ValueError(f"{path} has format {record.get('format')!r}, this tlgates reads "
                             f"{FORMAT}; regenerate it with the command in its provenance")
    rows = [r for r in records if r["kind"] == "result"]
    columns = [*KEY, "accuracy", "seconds", "params"]
    results = pd.DataFrame([{c: r[c] for c in columns} for r in rows], columns=columns)
    return Sweep(results, made)


def _canonical(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    made = [r for r in records if r["kind"] == "provenance"]
    rows = sorted((r for r in records if r["kind"] == "result"),
                  key=lambda r: tuple(r[k] for k in KEY))
    return made + rows


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with ``records``."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(temporary, path)


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")
        file.flush()
        os.fsync(file.fileno())


def check_resumable(out: str | Path, settings: dict[str, Any]) -> set[Setting]:
    """The settings already in ``out`` (none if it does not exist); a ValueError naming the
    flag if ``out`` is not a sweep file or was made with other training settings."""
    path = Path(out)
    if path.exists() and not path.is_file():
        raise ValueError(f"--out: {path} is not a file; pass the path of a results file")
    records, _ = _read_lines(path) if path.exists() else ([], False)
    for record in records:
        if record["kind"] == "provenance" and record["settings"] != settings:
            raise ValueError(_mismatch(path, record["settings"], settings))
    return {Setting(*(r[k] for k in KEY)) for r in records if r["kind"] == "result"}


def _start(path: Path, settings: dict[str, Any], made: dict[str, Any]) -> set[Setting]:
    """Open ``path`` for this invocation: the settings it already holds."""
    done = check_resumable(path, settings)
    records, cut = _read_lines(path) if path.exists() else ([], True)
    if cut:
        _write(path, records)  # drop a half-written last line (or create the file)
    _append(path, made)
    return done


def _mismatch(path: Path, theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    flags = {"preset": "--preset", "threads": "--threads"}
    for name, flag in flags.items():
        if theirs[name] != ours[name]:
            return (f"{flag}: {path} was made with {flag} {theirs[name]}, not "
                    f"{ours[name]}; pass {flag} {theirs[name]} to resume it, or another --out")
    changed = {k: v for k, v in theirs["config"].items() if ours["config"].get(k) != v}
    return (f"--out: {path} was made with other training settings ({changed}); pass the same "
            "settings to resume it, or another --out")


def run_setting(setting: Setting, config: TrainConfig, preset: str, threads: int,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one setting at ``threads`` torch threads; its result record. It is always trained
    (``cache=False``: a re-check must train), and kept in the run cache like any run."""
    result = run_method(setting.method, target=setting.target, shots=setting.shots,
                        seeds=[setting.seed], config=config, params=params, preset=preset,
                        progress=False, curves=False, threads=threads, cache=False,
                        keep_model=False)
    if not result.accuracies:  # fit stopped on a KeyboardInterrupt
        raise KeyboardInterrupt
    return {"kind": "result", **setting._asdict(), "accuracy": result.accuracies[0],
            "seconds": round(result.seconds, 3), "params": result.params}


def _prepare_sources(methods: Sequence[str], progress: bool) -> None:
    """Train (or load) each source network once, before workers would race to build it."""
    for kind in sorted({get_method(m).source for m in methods}):
        source_network(kind, progress=progress)


def _cost(setting: Setting, config: TrainConfig) -> int:
    """Training steps of a setting (10-class targets): the progress bar's unit."""
    return config.epochs * -(-10 * setting.shots // config.batch_size)


def _worker_start() -> None:
    """In each worker process: leave Ctrl-C to the sweep, and exit when the sweep's process is
    gone (killed), rather than train on for nobody."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _results(pending: list[Setting], config: TrainConfig, preset: str, threads: int,
             jobs: int, bar: tqdm) -> Iterator[dict[str, Any]]:
    """Run ``pending`` in this process or in ``jobs`` worker processes, as rows finish."""
    def show(running: Sequence[Setting]) -> None:
        bar.set_postfix_str("; ".join(f"{s.method} {s.target} {s.shots}/class seed {s.seed}"
                                      for s in running))

    if jobs == 1:
        for setting in pending:
            show([setting])
            yield run_setting(setting, config, preset, threads)
        return
    finished: queue.SimpleQueue = queue.SimpleQueue()
    waiting, running = iter(pending), []
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_worker_start) as pool:  # leaving it kills the workers
        while True:
            for setting in itertools.islice(waiting, jobs - len(running)):
                pool.apply_async(run_setting, (setting, config, preset, threads),
                                 callback=finished.put, error_callback=finished.put)
                running.append(setting)
            if not running:
                return
            show(running)
            row = finished.get()
            if isinstance(row, BaseException):
                raise row
            running.remove(Setting(*(row[k] for k in KEY)))
            yield row


def run_sweep(methods: Sequence[str], targets: Sequence[str], shots: Sequence[int], seeds: int,
              out: str | Path, *, jobs: int = 1, threads: int = 1,
              config: TrainConfig = TrainConfig(), preset: str = "tlgates",
              command: str | None = None, progress: bool = True) -> Sweep:
    """Run every setting of the grid not yet in ``out``; append each row as it finishes.

    Arguments are assumed checked (the command line checks them). ``threads`` is torch's
    thread count in every run (recorded: results depend on it); ``jobs`` runs that many
    settings at once in worker processes. Returns the file's contents when done; on
    KeyboardInterrupt the rows finished so far stay in ``out`` and a rerun resumes.
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = training_settings(config, preset, threads)
    command = command or " ".join(["python -m tlgates", *sys.argv[1:]])
    done = _start(path, settings, provenance(settings, command, jobs))
    pending = [s for s in grid(methods, targets, shots, seeds) if s not in done]
    _prepare_sources(methods, progress)
    costs = {s: _cost(s, config) for s in pending}
    bar = tqdm(total=sum(costs.values()), unit="step", desc=f"sweep ({len(pending)} runs)",
               disable=not progress, dynamic_ncols=True)
    with bar:
        for row in _results(pending, config, preset, threads, jobs, bar):
            _append(path, row)
            bar.update(costs[Setting(*(row[k] for k in KEY))])
    records, _ = _read_lines(path)
    _write(path, _canonical(records))
    return load_sweep(path)


def recheck(sweep: Sweep, rows: int = 3, *, seed: int | None = None,
            max_shots: int | None = None) -> pd.DataFrame:
    """Re-run ``rows`` random rows of a sweep with its settings; compare with the file.

    Returns one row per re-run setting with the file's and today's accuracy, ``same``
    (bit-for-bit equal), ``made_here`` (the file was made on this kind of CPU: only then must
    ``same`` hold; see :attr:`Sweep.made_here`) and ``params_current`` (the row's
    hyperparameters are still the recipe's values: otherwise the file is stale even where its
    numbers reproduce).
    ``max_shots`` limits the choice to cheaper rows; ``seed`` fixes the choice.
    """
    settings = sweep.settings
    config, preset = TrainConfig(**settings["config"]), settings["preset"]
    candidates = sweep.results
    if max_shots is not None:
        candidates = candidates[candidates["shots"] <= max_shots]
    chosen = candidates.sample(n=min(rows, len(candidates)), random_state=seed)
    checks = []
    for row in chosen.itertuples(index=False):
        setting = Setting(row.method, row.target, int(row.shots), int(row.seed))
        current = get_method(row.method).check({}, preset)
        again = run_setting(setting, config, preset, settings["threads"], params=row.params)
        checks.append({**setting._asdict(), "file": row.accuracy, "now": again["accuracy"],
                       "same": again["accuracy"] == row.accuracy,
                       "made_here": sweep.made_here,
                       "params_current": _jsonable(current) == row.params})
    return pd.DataFrame(checks)


def _jsonable(values: dict[str, Any]) -> Any:
    return json.loads(json.dumps(values))

