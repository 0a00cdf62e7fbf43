import ipywidgets as widgets
import pytest
import torch

from tlgates.backbones import tiny_resnet
from tlgates.dashboard import Dashboard, split_controls
from tlgates.source import SourceConfig, SourceModel
from tlgates.train import TrainConfig


@pytest.fixture
def source():
    torch.manual_seed(0)
    return SourceModel(tiny_resnet(width=8).eval(), SourceConfig(), 0.0, 0.0)


@pytest.fixture
def dash(source):
    return Dashboard("finetune", {
        "method": widgets.Dropdown(options=["finetune", "l2sp"], value="l2sp"),
        "shots": widgets.IntSlider(2, 1, 10),
        "epochs": widgets.IntSlider(1, 1, 5),
        "alpha": widgets.FloatSlider(0.5, min=0, max=1),
    }, source=source)


def test_split_controls_sends_each_value_where_it_belongs():
    run = split_controls({"shots": 3, "epochs": 4, "lr": 0.1, "alpha": 0.5}, "l2sp")
    assert run["method"] == "l2sp" and run["shots"] == 3
    assert run["config"] == TrainConfig(epochs=4, lr=0.1)
    assert run["params"]["alpha"] == 0.5 and run["params"]["beta"] == 0.01


def test_split_controls_ignores_other_methods_hyperparameters_and_rejects_unknown():
    assert split_controls({"method": "finetune", "alpha": 0.5}, "l2sp")["params"] == {
        "backbone_lr_scale": 1.0}
    with pytest.raises(ValueError, match="control 'speed' is not a setting of 'finetune'"):
        split_controls({"speed": 1}, "finetune")
    with pytest.raises(ValueError, match="epochs must be an integer"):
        split_controls({"epochs": 0}, "finetune")


def test_dashboard_follows_the_widget_contract(dash):
    assert "tlgates-dashboard" in dash._dom_classes
    assert "tlgates-results" in dash.table._dom_classes
    assert dash.train_button.description == "Train"
    assert all(w.continuous_update is False for w in dash.controls.values()
               if hasattr(w, "continuous_update"))


def test_run_adds_a_row_and_keeps_earlier_ones(dash):
    first = dash.run()
    assert first.method == "l2sp" and len(first.accuracies) == 1
    dash.controls["shots"].value = 3
    dash.controls["method"].value = "finetune"
    dash.run()
    assert [row["shots"] for row in dash.results] == [2, 3]
    assert [row["method"] for row in dash.results] == ["l2sp", "finetune"]
    html = dash.table.outputs[0]["data"]["text/html"]
    assert html.split("<tbody>")[1].count("<tr") == 2  # one row per run
    assert dash.curves.outputs[0]["data"]["image/png"]
    assert dash.progress.value == dash.progress.max == 1
    assert "finetune" in dash.status.value


def test_train_button_trains_in_the_background(dash):
    dash.train_button.click()
    dash.join(timeout=120)
    assert len(dash.results) == 1 and not dash.train_button.disabled


def test_stop_ends_training_early_without_a_result_row(dash):
    dash.controls["epochs"].value = 5
    dash._on_epoch_original = dash._on_epoch

    def stop_after_first_epoch(history):
        dash._on_epoch_original(history)
        dash.stop_button.click()

    dash._on_epoch = stop_after_first_epoch
    with pytest.warns(UserWarning, match="training stopped after 1 complete epoch"):
        result = dash.run()
    assert result.histories[0].interrupted and len(result.histories[0]) == 1
    assert dash.results == [] and "Stopped early after 1 epoch" in dash.status.value


def test_errors_in_the_background_are_shown(dash):
    dash.controls["alpha"] = widgets.FloatSlider(500.0, min=0, max=1000)
    dash.start()
    dash.join(timeout=60)
    assert "alpha must be in" in dash.status.value
