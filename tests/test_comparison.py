"""The side-by-side views: decision_summary reads each method's decisions correctly."""
import math

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from tlgates.backbones import tiny_resnet
from tlgates.methods import build_method
from tlgates.methods.ptu import RowLSTM
from tlgates.plotting import comparison
from tlgates.train import Evaluation, evaluate


def evaluation(method: str, **decisions: torch.Tensor) -> dict[str, Evaluation]:
    """``{method: Evaluation}`` of these decisions, summarised by the method's own model."""
    source = RowLSTM(24, 6) if method == "ptu-rnn" else tiny_resnet(width=8)
    model = build_method(method, source, 3)
    n = len(next(iter(decisions.values())))
    return {method: Evaluation(1.0, torch.zeros(n, 3), torch.zeros(n, dtype=torch.long),
                               decisions, model.decision_summary(decisions))}


def test_spottune_share_counts_frozen_block_passes_and_varying_blocks():
    # 4 images × 4 blocks: blocks 0 and 3 always fine-tuned, block 1 never, block 2 varies
    route = torch.tensor([[1, 0, 0, 1], [1, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 1]]).float()
    row = comparison.decision_summary(evaluation("spottune", route=route)).loc["spottune"]
    assert row["pre-trained share"] == pytest.approx(6 / 16)  # 6 of 16 passes frozen
    assert row["varies between images"] == pytest.approx(1 / 4)
    assert row["choices per image"] == 4
    assert "2 distinct routes" in row["reading"]


def test_adafilter_pools_the_filters_of_every_layer():
    gates = {"gate/a": torch.tensor([[1.0, 1.0], [1.0, 1.0]]),  # fixed choices
             "gate/b": torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])}  # one filter varies
    row = comparison.decision_summary(evaluation("adafilter", **gates)).loc["adafilter"]
    assert row["choices per image"] == 5
    assert row["pre-trained share"] == pytest.approx(3 / 10)  # 3 of 10 choices pre-trained
    assert row["varies between images"] == pytest.approx(1 / 5)


def test_ptu_share_is_the_source_weight_in_the_mix():
    z = torch.tensor([[0.2, 0.9], [0.2, 0.1]])
    r = torch.tensor([[0.6, 0.1], [0.6, 0.9]])
    row = comparison.decision_summary(evaluation("ptu", z=z, r=r)).loc["ptu"]
    assert row["pre-trained share"] == pytest.approx((0.25 + 0.9 + 0.25 + 0.1) / 4)
    assert row["choices per image"] == 4
    assert row["varies between images"] == pytest.approx(2 / 4)  # channel 2's z and r


def test_gtn_has_no_pretrained_share_and_counts_switched_off_features():
    gate = torch.tensor([[0.1, 0.9, 0.6], [0.1, 0.9, 0.8]])
    row = comparison.decision_summary(evaluation("gtn", gate=gate)).loc["gtn"]
    assert math.isnan(row["pre-trained share"])
    assert row["reading"].startswith("33% of the features switched off")
    assert row["varies between images"] == pytest.approx(1 / 3)


def test_real_models_give_shares_in_range(source, batch, trained):
    data = torch.utils.data.TensorDataset(*batch)
    evaluations = {name: evaluate(trained(name, steps=1), data)
                   for name in ("gtn", "spottune", "adafilter", "ptu")}
    table = comparison.decision_summary(evaluations)
    assert list(table.index) == ["gtn", "spottune", "adafilter", "ptu"]
    assert table["pre-trained share"].dropna().between(0, 1).all()
    assert table["varies between images"].between(0, 1).all()


def test_a_method_without_decisions_is_named_in_the_error(source, batch):
    data = torch.utils.data.TensorDataset(*batch)
    plain = evaluate(build_method("finetune", source, 3), data)
    assert plain.summary == {}
    with pytest.raises(ValueError, match="evaluations of finetune hold no decisions"):
        comparison.decision_summary({"finetune": plain})


def test_accuracy_vs_cost_plot():
    table = pd.DataFrame({"accuracy %": [84.0, 86.0], "± std": [2.0, 1.0],
                          "step time × finetune": [1.0, 1.4]}, index=["finetune", "delta"])
    fig = comparison.plot_accuracy_vs_cost(table)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["finetune", "delta"]
    assert "fine-tuning" in ax.get_xlabel()
