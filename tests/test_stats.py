import math

import pytest
from scipy import stats as scipy_stats

from tlgates.experiment import RunResult
from tlgates.stats import accuracy_cells, paired_difference, results_table


def run(accuracies, seeds=None):
    seeds = list(range(len(accuracies))) if seeds is None else seeds
    return RunResult("finetune", "digits", 5, seeds, list(accuracies), 1.0, {})


def test_interval_is_the_paired_t_interval():
    a, b = [0.80, 0.84, 0.90, 0.78, 0.86], [0.79, 0.80, 0.85, 0.80, 0.81]
    d = paired_difference(a, b, level=0.9)
    reference = scipy_stats.ttest_rel([100 * x for x in a], [100 * x for x in b])
    ci = reference.confidence_interval(0.9)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    assert d.mean == pytest.approx(2.6) and d.wins == 4 and d.n == 5


def test_verdict_needs_the_interval_to_exclude_zero():
    clear = paired_difference([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert clear.low > 0 and clear.verdict("gtn", "finetune") == "gtn better"
    assert paired_difference([0.8] * 3, [0.9, 0.91, 0.9]).verdict("a", "b") == "b better"
    noisy = paired_difference([0.9, 0.7, 0.85], [0.8, 0.8, 0.8])
    assert noisy.low < 0 < noisy.high and noisy.verdict().startswith("within the noise")
    assert "better in 2 of 3" in noisy.sentence("gtn", "finetune")
    one = paired_difference([0.9], [0.8])
    assert math.isnan(one.low) and one.verdict() == "one seed: no interval"


def test_pairing_and_shapes_are_checked():
    with pytest.raises(ValueError, match="paired by seed"):
        paired_difference(run([0.8, 0.9]), run([0.8, 0.9], seeds=[1, 2]))
    with pytest.raises(ValueError, match="one accuracy per seed"):
        paired_difference([0.8, 0.9], [0.8])
    with pytest.raises(ValueError, match="level"):
        paired_difference([0.8, 0.9], [0.8, 0.7], level=95)


def test_tables_show_no_std_for_one_seed():
    assert accuracy_cells(run([0.8]))["± std"] == "—"
    table = results_table({"a": run([0.8, 0.9]), "b": run([0.7])})
    assert list(table.columns) == ["test accuracy %", "± std", "seeds"]
    assert table.loc["a", "± std"] == pytest.approx(7.1) and table.loc["b", "± std"] == "—"


def long_frame():
    """Two targets × two label counts × 4 seeds of three methods, rows in a shuffled order."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [{"method": m, "target": t, "shots": k, "seed": s,
             "accuracy": 0.6 + 0.05 * s + {"finetune": 0, "gtn": 0.03, "linear": -0.1}[m]
             + rng.normal(0, 0.01)}
            for m in ("finetune", "gtn", "linear") for t in ("digits", "mnist")
            for k in (1, 5) for s in range(4)]
    return pd.DataFrame(rows).sample(frac=1, random_state=1)


def test_paired_gains_pair_by_seed_within_each_cell():
    from tlgates.stats import paired_gains

    frame = long_frame()
    gains = paired_gains(frame)
    assert len(gains) == 2 * 2 * 2 and set(gains["method"]) == {"gtn", "linear"}
    for row in gains.itertuples():
        cell = frame[(frame["target"] == row.target) & (frame["shots"] == row.shots)]

        def accuracies(method):
            return cell[cell["method"] == method].sort_values("seed")["accuracy"].tolist()

        expected = paired_difference(accuracies(row.method), accuracies("finetune"))
        assert (row.gain, row.low, row.high) == pytest.approx(
            (expected.mean, expected.low, expected.high))
        assert row.seeds == 4 and row.wins == expected.wins
    # the seed effect (+5 points per seed) cancels in the pairs: tight, clear verdicts
    assert set(gains.loc[gains["method"] == "gtn", "verdict"]) == {"better"}
    assert set(gains.loc[gains["method"] == "linear", "verdict"]) == {"worse"}
    assert (gains["high"] - gains["low"]).max() < 5


def test_paired_gains_use_only_seeds_both_methods_have():
    from tlgates.stats import paired_gains

    frame = long_frame()
    frame = frame[~((frame["method"] == "finetune") & (frame["seed"] == 3))]
    gains = paired_gains(frame, by=("target", "shots"))
    assert (gains["seeds"] == 3).all()
    assert paired_gains(frame[frame["seed"] == 0])["verdict"].eq("noise").all()  # no interval
    with pytest.raises(ValueError, match="baseline 'scratch' has no rows"):
        paired_gains(frame, baseline="scratch")
    with pytest.raises(ValueError, match="target"):
        paired_gains(frame.drop(columns="target"))


def test_regime_views_draw_every_cell_and_frame_the_supported_ones():
    from matplotlib.patches import Rectangle

    from tlgates.plotting import regime
    from tlgates.stats import paired_gains

    gains = paired_gains(long_frame())
    fig = regime.plot_regime_map(gains, methods=["gtn", "linear"])
    heatmaps = [ax for ax in fig.axes if ax.get_title() in ("digits", "mnist")]
    assert len(heatmaps) == 2
    for ax in heatmaps:
        assert len(ax.texts) == 4  # one printed gain per (method, shots)
        assert sum(isinstance(p, Rectangle) for p in ax.patches) == 4  # all are supported
    lines = regime.plot_gain_lines(gains, ["gtn"], targets=["mnist"])
    assert len(lines.axes) == 1 and lines.axes[0].get_title() == "mnist"
