"""A reusable training dashboard: sliders, Train and Stop, progress, live curves, results.

Every notebook builds its dashboard the same way::

    dash = Dashboard("l2sp", {
        "shots": widgets.IntSlider(5, 1, 50, description="labels/class"),
        "alpha": widgets.FloatLogSlider(0.1, base=10, min=-3, max=1, description="α"),
    }, source=source)
    dash

A control's name says where its value goes: a :class:`~tlgates.train.TrainConfig` field
(``epochs``, ``lr``, ``batch_size``), a run setting (``shots``, ``seeds``, ``target``,
``method``, ``preset``: the recipe, see :func:`recipe_control`), or one of the method's own
hyperparameters. *Train* runs in a background thread
so that *Stop* stays responsive; :meth:`Dashboard.run` does the same work synchronously (for
scripts, tests and notebook cells). Each run adds a row to the results table, which keeps the
earlier runs.
"""
from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure

from tlgates.experiment import RunResult, run_method
from tlgates.methods import METHODS, get_method
from tlgates.plotting import plot_history
from tlgates.source import SourceModel
from tlgates.stats import accuracy_cells
from tlgates.train import History, TrainConfig

RUN_SETTINGS = ("method", "shots", "seeds", "target", "preset")
# Live curves are redrawn at most this often (a redraw takes about 0.25 s on a laptop CPU,
# as long as a training epoch of the tiny network): often enough to watch, cheap enough not to
# slow the run down. The last epoch is always drawn.
REDRAW_SECONDS = 2.0
# The live validation curve has a point every VAL_EVERY epochs and at the last: validating the
# 200 validation images costs as much as a training epoch of the 5-shot task, or twice as much.
VAL_EVERY = 5
CONFIG_FIELDS = tuple(f.name for f in fields(TrainConfig))


def split_controls(values: dict[str, Any], method: str) -> dict[str, Any]:
    """Sort control values into ``run_method`` keyword arguments.

    Returns a dict with ``method`` (a ``"method"`` value overrides the argument), the run
    settings present, ``config`` (a :class:`TrainConfig`) and ``params`` (the method's
    hyperparameters: the recipe's, updated with the control values, checked). A
    hyperparameter of another registered method is ignored, so one dashboard can switch
    between methods; any other name raises a ``ValueError``.
    """
    method = values.get("method", method)
    spec = get_method(method)
    run: dict[str, Any] = {"method": method}
    config, params = {}, {}
    for name, value in values.items():
        if name in RUN_SETTINGS:
            run[name] = value
        elif name in CONFIG_FIELDS:
            config[name] = value
        elif name in spec.params:
            params[name] = value
        elif not any(name in other.params for other in METHODS.values()):
            allowed = RUN_SETTINGS + CONFIG_FIELDS + tuple(spec.params)
            raise ValueError(f"control {name!r} is not a setting of {method!r}; "
                             f"allowed: {', '.join(allowed)}")
    run["config"] = TrainConfig(**config)
    run["params"] = spec.check(params, run.get("preset", "tlgates"))
    return run


def recipe_control(value: str = "tlgates") -> widgets.Dropdown:
    """The *recipe* menu of every paper's dashboard (control name ``"preset"``): tlgates'
    defaults, or the paper's / official code's value of every switchable deviation."""
    return widgets.Dropdown(options=[("tlgates", "tlgates"), ("paper", "paper")],
                            value=value, description="recipe")


def result_row(values: dict[str, Any], result: RunResult) -> dict[str, Any]:
    """A results-table row: the settings that applied to this run (of ``values``, those of its
    method, the loop and the run), its :func:`~tlgates.stats.accuracy_cells` and seconds."""
    spec = get_method(result.method)
    row = {name: value for name, value in values.items()
           if name in RUN_SETTINGS or name in CONFIG_FIELDS or name in spec.params}
    return {**row, **accuracy_cells(result), "seconds": round(result.seconds, 1)}


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The results table: one row per run, "—" where a setting is not one of that run's
    method, every value as it was set (an integer stays an integer)."""
    return pd.DataFrame(rows, dtype=object).fillna("—")


def _figure_output(fig: Figure) -> dict[str, Any]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    png = base64.b64encode(buffer.getvalue()).decode()
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": png, "text/plain": "<Figure>"}}


def _html_output(html: str, text: str) -> dict[str, Any]:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/html": html, "text/plain": text}}


class Dashboard(widgets.VBox):
    """Controls, Train/Stop buttons, a progress bar, live curves, a results table and a view.

    Args:
        method: the method to train (a ``"method"`` control, e.g. a Dropdown, overrides it).
        controls: name → value widget; see the module docstring for the names.
        source: the pre-trained source model.
        view: optional ``RunResult → Figure`` drawn after each run (routes, gates, ...).
        seeds: seeds per run unless a ``"seeds"`` control sets it (1 keeps retraining fast).
    """

    def __init__(self, method: str, controls: dict[str, widgets.ValueWidget], *,
                 source: SourceModel, view: Callable[[RunResult], Figure] | None = None,
                 seeds: int = 1, title: str = ""):
        self.method, self.controls, self.source = method, dict(controls), source
        self.view_fn, self.seeds = view, seeds
        self.results: list[dict[str, Any]] = []
        self.last_result: RunResult | None = None
        self._stop = threading.Event()
        self._drawn_at = 0.0
        self._thread: threading.Thread | None = None
        for widget in self.controls.values():
            if hasattr(widget, "continuous_update"):
                widget.continuous_update = False
            widget.style = {"description_width": "120px"}
        if "preset" in self.controls:
            self.controls["preset"].observe(self._apply_recipe, names="value")
        self.train_button = widgets.Button(description="Train", button_style="primary",
                                           icon="play")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.train_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.progress = widgets.IntProgress(0, 0, 1, description="epochs")
        self.status = widgets.HTML("Press <b>Train</b> to train with these settings.")
        self.curves = widgets.Output(layout={"min_height": "200px"})
        self.table = widgets.Output()
        self.table.add_class("tlgates-results")
        self.view = widgets.Output()
        header = [widgets.HTML(f"<h3>{title}</h3>")] if title else []
        super().__init__(header + [
            widgets.HBox([widgets.VBox(list(self.controls.values())),
                          widgets.VBox([widgets.HBox([self.train_button, self.stop_button]),
                                        self.progress, self.status])]),
            widgets.HBox([self.curves, self.table]),
            self.view,
        ])
        self.add_class("tlgates-dashboard")

    def _apply_recipe(self, change: dict[str, Any]) -> None:
        """A new recipe moves every hyperparameter control to that recipe's value."""
        method = self.controls["method"].value if "method" in self.controls else self.method
        recipe = get_method(method).defaults(change["new"])
        for name, widget in self.controls.items():
            if name in recipe:
                widget.value = recipe[name]

    def values(self) -> dict[str, Any]:
        """The current value of every control."""
        return {name: widget.value for name, widget in self.controls.items()}

    def start(self) -> None:
        """Train in a background thread (what the Train button does)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run_safely, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a training started with :meth:`start`."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_safely(self) -> None:
        try:
            self.run()
        except Exception as err:  # shown to the student instead of dying in a thread
            self.status.value = f"<span style='color:#b00'>Error: {err}</span>"

    def run(self, values: dict[str, Any] | None = None) -> RunResult:
        """Train once with ``values`` (default: the controls), record and show the result."""
        values = self.values() if values is None else values
        settings = split_controls(values, self.method)
        settings.setdefault("seeds", self.seeds)
        config: TrainConfig = settings["config"]
        self._stop.clear()
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.progress.max, self.progress.value = config.epochs * settings["seeds"], 0
        self.status.value = f"Training <b>{settings['method']}</b>…"
        self._drawn_at = time.monotonic()
        try:
            result = run_method(source=self.source, progress=False, on_epoch=self._on_epoch,
                                should_stop=self._stop.is_set, val_every=VAL_EVERY,
                                **settings)
        finally:
            self.train_button.disabled, self.stop_button.disabled = False, True
        self.last_result = result
        self._draw(result.histories[-1])
        if result.accuracies:
            self.add_result(result, values)
            if self.view_fn is not None:
                self.view.outputs = (_figure_output(self.view_fn(result)),)
        if result.histories[-1].interrupted:
            done = sum(len(h) for h in result.histories)
            self.status.value = (f"Stopped early after {done} epoch(s); the unfinished run is "
                                 "not added to the table.")
        else:
            self.progress.value = self.progress.max
            self.status.value = result.summary()
        return result

    def add_result(self, result: RunResult, settings: dict[str, Any] | None = None) -> None:
        """Add a row for ``result`` to the results table (``settings``: the values to show
        beside it, default its method and recipe), e.g. a run trained earlier in the
        notebook."""
        settings = {"method": result.method, "preset": result.preset} if settings is None \
            else settings
        self.results.append(result_row(settings, result))
        self._show_table()

    def _on_epoch(self, history: History) -> None:
        self.progress.value += 1
        if time.monotonic() - self._drawn_at >= REDRAW_SECONDS:
            self._draw(history)

    def _draw(self, history: History) -> None:
        if len(history):
            self.curves.outputs = (_figure_output(plot_history(history)),)
        self._drawn_at = time.monotonic()

    def _show_table(self) -> None:
        frame = results_frame(self.results)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="run")
        self.table.outputs = (_html_output(frame.to_html(), frame.to_string()),)
