"""Faithful to the papers: the two recipes, the deviations table, and the fixes that make each
setting mean what it says (momentum, DELTA's reference, evaluation, the source models)."""
import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlgates.__main__ import main
from tlgates.backbones import tiny_resnet
from tlgates.dashboard import Dashboard, recipe_control, result_row, results_frame
from tlgates.experiment import RunResult, deviation_frame
from tlgates.methods import METHODS, ORIGINS, PRESETS, build_method, get_method
from tlgates.methods.delta import (
    FeatureMapRegularization, channel_loss_rises, channel_loss_rises_naive, fit_probe,
    regularized_module, stage_maps,
)
from tlgates.source import SourceConfig, SourceModel
from tlgates.train import TrainConfig, _scheduler, evaluate, fit

PAPER_METHODS = [name for name, spec in METHODS.items() if spec.paper]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(2)
    return TensorDataset(torch.rand(12, 3, 32, 32, generator=g), torch.arange(12) % 3)


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", list(METHODS))
def test_every_deviation_is_complete_and_every_switch_is_a_hyperparameter(name):
    spec = get_method(name)
    for row in spec.deviation_table():
        assert row.origin in ORIGINS and row.why and row.ours and row.paper, row
        assert row.switch is None or row.switch in spec.params
    switched = {k for k, p in spec.params.items() if p.paper is not None}
    for k in switched:
        assert spec.defaults("paper")[k] == spec.params[k].paper
    differs = {k for k in spec.params if spec.defaults("paper")[k] != spec.defaults()[k]}
    assert differs == switched  # the presets differ in exactly the switchable deviations
    assert list(deviation_frame(name).columns) == ["setting", "tlgates", "paper", "origin",
                                                   "switch", "why"]


def test_every_paper_method_states_how_it_differs():
    for name in PAPER_METHODS:
        assert len(deviation_frame(name)) > 0, name
    for name in ("adafilter", "ptu", "ptu-rnn"):  # no public code: all reconstruction
        assert set(deviation_frame(name)["origin"]) == {"reconstruction"}
        assert get_method(name).defaults("paper") == get_method(name).defaults()


def test_paper_preset_builds_the_official_choices(source):
    assert get_method("spottune").defaults("paper")["frozen_bn"] == "train"
    assert get_method("gtn").check({"warmup_epochs": 2}, "paper")["warmup_epochs"] == 2
    model = build_method("delta", source, 3, preset="paper")
    assert (model.source_bn, model.feature_point, model.batch_reduction, model.head_bias) == (
        "eval", "conv", "sum", True)
    with pytest.raises(ValueError, match="preset must be one of tlgates, paper"):
        build_method("delta", source, 3, preset="official")


@pytest.mark.parametrize("argv, names", [
    (["run", "gtn", "--preset", "official"], "--preset"),
    (["run", "gtn", "--preset", "paper", "--set", "bias=maybe"], "bias"),
])
def test_bad_preset_exits_2_naming_it(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0]


def test_cli_prints_every_paper_methods_deviations(capsys):
    assert main(["methods", "--deviations"]) == 0
    out = capsys.readouterr().out
    for name in PAPER_METHODS:
        assert f"\n{name}  [" in out
    assert "--set feature_point=conv" in out and "reconstruction; no switch" in out


# ----------------------------------------------------------------------------- the loop


def _momenta(config: TrainConfig, steps: int = 10) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr,
                                momentum=config.momentum)
    scheduler = _scheduler(optimizer, config, steps)
    momenta = []
    for _ in range(steps):
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return momenta


def test_momentum_means_what_it_says_under_every_schedule():
    assert set(_momenta(TrainConfig(momentum=0.0, momentum_cycle=0.0))) == {0.0}
    assert set(_momenta(TrainConfig(momentum=0.8, momentum_cycle=0.0))) == {0.8}
    assert set(_momenta(TrainConfig(momentum=0.7, schedule="cosine"))) == {0.7}
    cycled = _momenta(TrainConfig())  # 0.95 at the start, 0.85 at the peak learning rate
    assert cycled[0] == 0.95 and min(cycled) == pytest.approx(0.85, abs=1e-3)
    with pytest.raises(ValueError, match="momentum_cycle must be in"):
        TrainConfig(momentum=0.0)  # a cycle around 0 would go negative: say so


def _spottune_sampling(source):
    torch.manual_seed(0)
    return build_method("spottune", source, 3, sample_at_eval=True)


def test_evaluation_never_changes_training(source, data):
    loop = TrainConfig(epochs=2, batch_size=4)
    with_val, without_val = _spottune_sampling(source), _spottune_sampling(source)
    fit(with_val, data, data, loop, seed=3, progress=False)
    fit(without_val, data, None, loop, seed=3, progress=False)
    for (name, a), b in zip(with_val.state_dict().items(), without_val.state_dict().values()):
        assert torch.equal(a, b), name
    state = torch.get_rng_state()
    first, second = evaluate(with_val, data), evaluate(with_val, data)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert torch.equal(first.logits, second.logits)  # sampled routes are seeded: repeatable


def test_no_method_module_imports_up_the_layers():
    package = Path(__file__).resolve().parent.parent / "tlgates" / "methods"
    upper = {"tlgates.train", "tlgates.data", "tlgates.source", "tlgates.experiment",
             "tlgates.dashboard"}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module not in upper, f"{path.name} imports {node.module}"


# ----------------------------------------------------------------------------- DELTA


def test_delta_reference_stays_the_source_network_in_every_mode(source, data, one_step):
    x, y = data.tensors
    for source_bn in ("batch", "eval"):
        model = build_method("delta", source, 3, alpha=1.0, source_bn=source_bn)
        before = model.distances(x)
        for _ in range(3):
            one_step(model, x, y)
        for name, value in source.state_dict().items():
            assert torch.equal(model.source.module.state_dict()[name], value), name
        fresh = build_method("delta", source, 3, alpha=1.0, source_bn=source_bn)
        fresh.backbone.load_state_dict(model.backbone.state_dict())
        torch.testing.assert_close(model.distances(x), fresh.distances(x))
        assert not torch.equal(model.distances(x), before)


def test_batch_mode_normalises_the_source_with_batch_statistics(source, data):
    x, y = data.tensors
    model = build_method("delta", source, 3, alpha=1.0).train()
    assert model.loss_terms(x, y)["delta"].item() == 0  # both networks normalise alike
    assert not model.source.training  # and its running statistics cannot move


def test_conv_point_reads_the_last_convolution_before_its_batchnorm(source, data):
    x = data.tensors[0]
    blocks = source.stage_ends
    convs = [source.blocks[b].conv2 for b in blocks]
    assert [regularized_module(source, b, "conv") for b in blocks] == convs
    captured = []
    handles = [c.register_forward_hook(lambda m, i, o: captured.append(o)) for c in convs]
    with torch.no_grad():
        source(x)
    for h in handles:
        h.remove()
    with torch.no_grad():
        maps = stage_maps(source, x, blocks, "conv")
    for got, want in zip(maps, captured):
        torch.testing.assert_close(got, want)
    assert not source.blocks[blocks[0]].conv2._forward_hooks  # hooks removed after use


def test_fast_attention_equals_the_naive_one_at_the_conv_point(source, data):
    head = fit_probe(source(data.tensors[0]).detach(), data.tensors[1], 3)
    blocks = source.stage_ends
    fast, base_fast = channel_loss_rises(source, head, data, blocks, point="conv",
                                         chunk_elements=5000)
    naive, base_naive = channel_loss_rises_naive(source, head, data, blocks, point="conv")
    assert base_fast == pytest.approx(base_naive)
    for f, n in zip(fast, naive):
        torch.testing.assert_close(f, n, atol=1e-6, rtol=1e-5)
    block_point, _ = channel_loss_rises(source, head, data, blocks)
    assert not all(torch.allclose(a, b) for a, b in zip(fast, block_point))


def test_official_reductions_scale_omega_and_the_head_penalty(source, data):
    x, y = data.tensors
    terms = {}
    for name, params in {"ours": {}, "sum": {"batch_reduction": "sum"},
                         "bias": {"head_bias": True}}.items():
        torch.manual_seed(0)
        model = build_method("delta", source, 3, alpha=1.0, source_bn="eval", **params)
        terms[name] = model.train().loss_terms(x, y)
        if name == "bias":
            extra = 0.5 * 0.01 * model.head.bias.pow(2).sum()
    torch.testing.assert_close(terms["sum"]["delta"], 0.5 * len(x) * terms["ours"]["delta"])
    torch.testing.assert_close(terms["bias"]["head_l2"], terms["ours"]["head_l2"] + extra)
    g = torch.Generator().manual_seed(0)
    maps_s, maps_t = [torch.rand(2, 4, 3, 5, generator=g)], [torch.rand(2, 4, 3, 5, generator=g)]
    weights = [torch.rand(4, generator=g)]
    flat = FeatureMapRegularization(weights, area_norm=False).distances(maps_s, maps_t)
    normed = FeatureMapRegularization(weights).distances(maps_s, maps_t)
    torch.testing.assert_close(flat, 15 * normed)  # the official sum over the 3×5 pixels
    assert build_method("fml2", source, 3, area_norm=False).regularizer.area_norm is False


# ----------------------------------------------------------------------------- L2-SP, GTN, SpotTune


def test_l2sp_weights_only_leaves_batchnorm_out_of_the_penalty(source):
    weights_only = build_method("l2sp", source, 3, bn_in_penalty=False)
    everything = build_method("l2sp", source, 3)
    for model in (weights_only, everything):
        with torch.no_grad():
            model.backbone.stem[1].weight.add_(1.0)  # a BatchNorm scale
    assert weights_only.starting_point_penalty().item() == 0
    assert everything.starting_point_penalty().item() > 0
    with torch.no_grad():
        weights_only.backbone.stem[0].weight.add_(0.1)  # a convolution weight
    assert weights_only.starting_point_penalty().item() > 0


def test_gtn_official_layers_have_no_biases_and_dropouts_are_separate(source):
    model = build_method("gtn", source, 3, preset="paper")
    new = [name for name, _ in model.named_parameters() if not name.startswith("backbone.")]
    assert new and not any(name.endswith("bias") for name in new)
    assert (model.gate.dropout.p, model.dropout.p) == (0.7, 0.5)


def test_gtn_official_warmup_freezes_weights_but_lets_statistics_drift(source, batch, one_step):
    for warmup_bn, drifts in (("eval", False), ("train", True)):
        model = build_method("gtn", source, 3, warmup_epochs=1, warmup_bn=warmup_bn)
        model.on_epoch_start(0, 5)
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        one_step(model, *batch)
        after = model.backbone.state_dict()
        for name in before:
            statistic = "running" in name or "num_batches" in name
            assert torch.equal(before[name], after[name]) is not (statistic and drifts), name


def test_spottune_official_frozen_path_trains_only_its_batchnorm(source, batch, one_step):
    torch.manual_seed(0)
    model = build_method("spottune", source, 3, frozen_bn="train")
    before = {k: v.clone() for k, v in model.frozen_blocks.state_dict().items()}
    grouped = {id(p) for g in model.param_groups(0.1) for p in g["params"]}
    assert model.frozen_bn_params and all(id(p) in grouped for p in model.frozen_bn_params)
    one_step(model, *batch)
    after = model.frozen_blocks.state_dict()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed is ("bn" in name or "downsample.1" in name), name


# ----------------------------------------------------------------------------- dashboards


def test_results_rows_show_only_the_runs_settings_and_no_std_of_one_seed():
    result = RunResult("finetune", "digits", 5, [0], [0.8], 1.0, {})
    row = result_row({"method": "finetune", "shots": 5, "alpha": 0.5}, result)
    assert "alpha" not in row and row["± std"] == "—"
    several = RunResult("finetune", "digits", 5, [0, 1], [0.8, 0.9], 1.0, {})
    assert result_row({"shots": 5}, several)["± std"] == pytest.approx(7.1)
    table = results_frame([{"method": "lora", "rank": 4}, {"method": "bnfit"}])
    assert table["rank"].tolist() == [4, "—"] and "nan" not in table.to_string()


def test_recipe_menu_moves_the_sliders_to_the_papers_values():
    import ipywidgets as widgets

    source = SourceModel(tiny_resnet(width=8).eval(), SourceConfig(), 0.0, 0.0)
    dash = Dashboard("gtn", {"preset": recipe_control(),
                             "gate_dropout": widgets.FloatSlider(0.2, min=0, max=0.9)},
                     source=source)
    dash.controls["preset"].value = "paper"
    assert dash.controls["gate_dropout"].value == 0.7
    assert set(recipe_control().options) == {(p, p) for p in PRESETS}
