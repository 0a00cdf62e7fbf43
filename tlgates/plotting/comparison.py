"""Views that put the methods side by side: accuracy against training cost, and what each
adaptive method decided on the test images, in one comparable table.

:func:`decision_summary` puts side by side what each adaptive method said it decided on the
same images (its ``decision_summary``, computed by :func:`tlgates.train.evaluate` from the same
tensors the per-paper notebooks draw). Every function returns a ``DataFrame`` or a
matplotlib ``Figure`` made without pyplot.
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from tlgates.methods import SUMMARY_COLUMNS
from tlgates.train import Evaluation

def decision_summary(evaluations: Mapping[str, Evaluation]) -> pd.DataFrame:
    """One row per adaptive method: what decides, how many choices per image, the share of
    them that keep the pre-trained side (SpotTune: frozen copy; AdaFilter: pre-trained filter;
    PTU: ``z / (z + r)``, the source's weight in the mix; GTN gates features of the fine-tuned
    network, so it has none), a reading, and the share of choices that vary between images.

    ``evaluations`` maps a method name to its test evaluation; each row is the model's own
    ``decision_summary`` that :func:`tlgates.train.evaluate` stored, so a new method appears
    here by itself.
    """
    empty = sorted(name for name, evaluation in evaluations.items() if not evaluation.summary)
    if empty:
        raise ValueError(f"evaluations of {', '.join(empty)} hold no decisions to summarise "
                         "(only methods that decide per example have them)")
    rows = {name: evaluation.summary for name, evaluation in evaluations.items()}
    return pd.DataFrame.from_dict(rows, orient="index",
                                  columns=list(SUMMARY_COLUMNS)).rename_axis("method")


def plot_accuracy_vs_cost(table: pd.DataFrame, *, title: str = "") -> Figure:
    """Test accuracy (mean ± std over seeds) against step time relative to fine-tuning, one
    point per method. ``table`` has the columns ``accuracy %``, ``± std`` and
    ``step time × finetune``, indexed by method."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    x, y = table["step time × finetune"], table["accuracy %"]
    ax.errorbar(x, y, yerr=table["± std"], fmt="none", ecolor="0.7", capsize=3)
    sns.scatterplot(x=x, y=y, hue=table.index, legend=False, s=60, ax=ax)
    for method, (xi, yi) in zip(table.index, zip(x, y)):
        ax.annotate(method, (xi, yi), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.axvline(1.0, color="0.8", lw=0.8, ls="--")
    ax.set(xlabel="training-step time (× fine-tuning's)", ylabel="test accuracy (%)",
           title=title or "Accuracy against training cost (mean ± std over seeds)")
    fig.tight_layout()
    return fig
