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
