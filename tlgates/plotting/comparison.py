"""Views that put the methods side by side: accuracy against training cost, and what each
adaptive method decided on the test images, in one comparable table.

:func:`decision_summary` reads the per-example decisions that :func:`tlgates.train.evaluate`
gathers (the same tensors the per-paper notebooks draw): GTN's feature gates, SpotTune's routes,
AdaFilter's filter gates and PTU's ``(z, r)`` gates. Every function returns a ``DataFrame`` or a
matplotlib ``Figure`` made without pyplot.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from tlgates.train import Evaluation

VARIES = 0.05  # a continuous gate "varies between images" when its std over them exceeds this


def _choices(evaluation: Evaluation, prefix: str) -> torch.Tensor:
    """The decisions whose name starts with ``prefix``, as one ``(images, choices)`` tensor."""
    return torch.cat([value.flatten(1).float() for name, value in evaluation.decisions.items()
                      if name.startswith(prefix)], dim=1)


def _varying(choices: torch.Tensor) -> float:
    """Share of the choices that are not the same for every image (binary) or spread by more
    than :data:`VARIES` (continuous)."""
    if ((choices == 0) | (choices == 1)).all():
        return (choices.amax(0) != choices.amin(0)).float().mean().item()
    return (choices.std(0) > VARIES).float().mean().item()


def _gtn(ev: Evaluation) -> dict:
    g = ev.decisions["gate"].float()
    return {"decides": "a gate g ∈ (0, 1) per pooled feature", "choices per image": g.shape[1],
            "pre-trained share": float("nan"),
            "reading": f"{(g < 0.5).float().mean():.0%} of the features switched off "
                       f"(g < 0.5); mean gate {g.mean():.2f}",
            "varies between images": _varying(g)}


def _spottune(ev: Evaluation) -> dict:
    route = ev.decisions["route"].float()
    return {"decides": "frozen or fine-tuned copy per residual block",
            "choices per image": route.shape[1], "pre-trained share": 1 - route.mean().item(),
            "reading": f"{len(torch.unique(route, dim=0))} distinct routes over the images",
            "varies between images": _varying(route)}


def _adafilter(ev: Evaluation) -> dict:
    gates = _choices(ev, "gate/")
    return {"decides": "pre-trained or fine-tuned weights per filter",
            "choices per image": gates.shape[1], "pre-trained share": 1 - gates.mean().item(),
            "reading": f"{gates.mean():.0%} of the filters on fine-tuned weights",
            "varies between images": _varying(gates)}


def _ptu(ev: Evaluation) -> dict:
    z, r = (ev.decisions[name].flatten(1).float() for name in ("z", "r"))
    return {"decides": "gates (z, r) mixing source and target activations per channel",
            "choices per image": 2 * z.shape[1],
            "pre-trained share": (z / (z + r).clamp_min(1e-8)).mean().item(),
            "reading": f"mean z (source) {z.mean():.2f}, mean r (target) {r.mean():.2f}",
            "varies between images": _varying(torch.cat([z, r], dim=1))}


SUMMARIES: dict[str, Callable[[Evaluation], dict]] = {
    "gtn": _gtn, "spottune": _spottune, "adafilter": _adafilter, "ptu": _ptu}


def decision_summary(evaluations: Mapping[str, Evaluation]) -> pd.DataFrame:
    """One row per adaptive method: what decides, how many choices per image, the share of
    them that keep the pre-trained side (SpotTune: frozen copy; AdaFilter: pre-trained filter;
    PTU: ``z / (z + r)``, the source's weight in the mix; GTN gates features of the fine-tuned
    network, so it has none), a reading, and the share of choices that vary between images.

    ``evaluations`` maps a method name (a key of :data:`SUMMARIES`) to its test evaluation.
    """
    unknown = set(evaluations) - set(SUMMARIES)
    if unknown:
        raise ValueError(f"evaluations must be of {', '.join(SUMMARIES)}; got "
                         f"{', '.join(sorted(unknown))}")
    rows = {name: SUMMARIES[name](evaluation) for name, evaluation in evaluations.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


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
