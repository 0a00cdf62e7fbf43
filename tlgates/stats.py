"""The course's statistics: paired differences over seeds, with a t-interval, and one rule to
read them.

Two methods trained on the same seeds see the same K-shot training sets, so their accuracies are
compared seed by seed (paired): ``d_s = acc_a(s) − acc_b(s)``. The mean ``d̄`` comes with the
Student-t interval ``d̄ ± t_{n−1, (1+level)/2} · sd(d) / √n``; the verdict is "better" or
"worse" only when the interval excludes 0, and "within the noise" otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from tlgates.experiment import RunResult


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` in percentage points, seed by seed, and what it supports.

    Attributes:
        diffs: the per-seed differences.
        low, high: the ``level`` t-interval of their mean (NaN for a single seed).
    """

    diffs: tuple[float, ...]
    low: float
    high: float
    level: float

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs))

    @property
    def wins(self) -> int:
        """Seeds on which ``a`` was better."""
        return sum(d > 0 for d in self.diffs)

    @property
    def direction(self) -> int:
        """+1 if the interval lies above 0, −1 if below, 0 if it covers 0 (or is missing):
        the one rule of the course."""
        return int(self.low > 0) - int(self.high < 0)

    def verdict(self, a: str = "a", b: str = "b") -> str:
        """``"a better"``, ``"b better"`` or within the noise (see :attr:`direction`)."""
        if self.n < 2:
            return "one seed: no interval"
        return {1: f"{a} better", -1: f"{b} better",
                0: "within the noise (the interval covers 0)"}[self.direction]

    def sentence(self, a: str, b: str) -> str:
        """One Markdown line: the mean difference, its interval, the wins and the verdict."""
        interval = (f" [{self.low:+.1f}, {self.high:+.1f}]" if self.n > 1 else "")
        return (f"**{a}** − **{b}**: {self.mean:+.1f} points{interval} ({self.level:.0%} "
                f"interval, {self.n} seeds paired), better in {self.wins} of {self.n}: "
                f"{self.verdict(a, b)}.")


def paired_difference(a: RunResult | Sequence[float], b: RunResult | Sequence[float], *,
                      level: float = 0.95) -> PairedDifference:
    """``a − b`` paired by seed, in points. ``a`` and ``b`` are run results on the same seeds
    (checked) or accuracies in [0, 1] in the same seed order."""
    if isinstance(a, RunResult) and isinstance(b, RunResult) and a.seeds != b.seeds:
        raise ValueError(f"a and b must be paired by seed, got seeds {a.seeds} and {b.seeds}")
    acc_a = np.asarray(a.accuracies if isinstance(a, RunResult) else a, dtype=float)
    acc_b = np.asarray(b.accuracies if isinstance(b, RunResult) else b, dtype=float)
    if acc_a.shape != acc_b.shape or acc_a.ndim != 1 or len(acc_a) == 0:
        raise ValueError(f"a and b must hold one accuracy per seed each, got {len(acc_a)} and "
                         f"{len(acc_b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    diffs = 100 * (acc_a - acc_b)
    if len(diffs) < 2:
        return PairedDifference(tuple(diffs.tolist()), float("nan"), float("nan"), level)
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(
        len(diffs))
    return PairedDifference(tuple(diffs.tolist()), float(diffs.mean() - half),
                            float(diffs.mean() + half), level)


VERDICTS = {1: "better", -1: "worse", 0: "noise"}


def paired_gains(frame: pd.DataFrame, baseline: str = "finetune", *,
                 by: Sequence[str] = ("target", "shots"), level: float = 0.95) -> pd.DataFrame:
    """Every method's gain over ``baseline``, paired by seed, in each group of ``by``.

    ``frame`` is long, one row per run, with the columns ``method``, ``seed``, ``accuracy``
    (in [0, 1]) and those of ``by`` (a sweep's ``results``, or what ``compare`` returns with
    ``by=("shots",)``). Within a group, a method is paired with ``baseline`` on the seeds both
    have. Returns one row per (group, method other than the baseline): ``gain`` (mean of
    ``acc − acc_baseline`` in points), ``low`` and ``high`` (its ``level`` t-interval),
    ``seeds``, ``wins`` (seeds on which the method was better) and ``verdict``: "better" or
    "worse" only when the interval excludes 0, else "noise".
    """
    by = list(by)
    missing = {"method", "seed", "accuracy", *by} - set(frame.columns)
    if missing:
        raise ValueError(f"frame lacks the column(s) {sorted(missing)}")
    if baseline not in set(frame["method"]):
        raise ValueError(f"baseline {baseline!r} has no rows; the methods are "
                         f"{sorted(set(frame['method']))}")
    reference = frame[frame["method"] == baseline][[*by, "seed", "accuracy"]]
    paired = frame[frame["method"] != baseline].merge(reference, on=[*by, "seed"],
                                                      suffixes=("", "_baseline"))
    rows = []
    for key, group in paired.sort_values("seed").groupby([*by, "method"], sort=False):
        difference = paired_difference(group["accuracy"].to_numpy(),
                                       group["accuracy_baseline"].to_numpy(), level=level)
        rows.append({**dict(zip([*by, "method"], key)), "gain": difference.mean,
                     "low": difference.low, "high": difference.high, "seeds": difference.n,
                     "wins": difference.wins, "verdict": VERDICTS[difference.direction]})
    return pd.DataFrame(rows).sort_values([*by, "method"], ignore_index=True)


def accuracy_cells(result: RunResult) -> dict[str, float | str | int]:
    """A results row's accuracy cells: ``test accuracy %``, ``± std`` (sample std over seeds;
    "—" for a single seed, which has none) and ``seeds``."""
    return {"test accuracy %": round(100 * result.mean, 1),
            "± std": round(100 * result.std, 1) if len(result.accuracies) > 1 else "—",
            "seeds": len(result.accuracies)}


def results_table(results: Mapping[str, RunResult], index: str = "method") -> pd.DataFrame:
    """One row of :func:`accuracy_cells` per labelled run."""
    rows = {label: accuracy_cells(result) for label, result in results.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(index)
