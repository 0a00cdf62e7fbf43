"""Semantic tests of AdaFilter (arXiv 1911.09659): binary gates, the two paths, frozen weights."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from tlgates.backbones import Backbone, torchvision_resnet
from tlgates.methods import build_method, get_method
from tlgates.methods.adafilter import AdaFilter, _PairedConv2d, binary_gate, filters_that_vary
from tlgates.plotting import plot_path_accuracies
from tlgates.train import TrainConfig, fit, path_accuracies


def test_gated_layers_of_the_tiny_resnet(source):
    model = build_method("adafilter", source, 3)
    assert model.layer_names == [
        "stem.0", "block0.conv1", "block0.conv2",
        "block1.conv1", "block1.downsample", "block1.conv2",
        "block2.conv1", "block2.downsample", "block2.conv2",
        "block3.conv1", "block3.downsample", "block3.conv2"]
    # conv1 and the projection shortcut read the same input: one LSTM step for both
    steps = {layer.name: layer.step for layer in model.layers}
    assert steps["block1.conv1"] == steps["block1.downsample"] == 3
    assert len(model.gates.embed) == 9 and len(model.gates.heads[3]) == 2
    assert [layer.filters for layer in model.layers][:4] == [8, 8, 8, 16]


def test_gates_are_binary_and_recorded_per_example(source, batch):
    for estimator in ("gumbel", "straight-through"):
        model = build_method("adafilter", source, 3, estimator=estimator)
        for training in (True, False):
            model.train(training)
            logits = model(batch[0])
            assert logits.shape == (8, 3)
            assert list(model.last_decisions) == [f"gate/{n}" for n in model.layer_names]
            for layer in model.layers:
                g = model.last_decisions[f"gate/{layer.name}"]
                assert g.shape == (8, layer.filters)
                assert set(g.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("gate_input", ["raw", "standardized"])
def test_the_lstm_and_its_maps_receive_gradients(source, batch, gate_input):
    model = build_method("adafilter", source, 3, gate_input=gate_input)
    model.train()
    sum(model.loss_terms(*batch).values()).backward()
    gates = model.gates
    for name, p in [("cell.weight_ih", gates.cell.weight_ih), ("cell.weight_hh",
                    gates.cell.weight_hh), ("embed[0]", gates.embed[0][1].weight),
                    ("embed[-1]", gates.embed[-1][1].weight), ("head of the first step",
                    gates.heads[0][0].weight), ("head of a shortcut", gates.heads[3][1].weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_standardized_gate_input_removes_what_all_images_share(source, batch):
    model = build_method("adafilter", source, 3, gate_input="standardized").train()
    pooled = 2 + 3 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    norm, linear = model.gates.embed[0]
    standardized = norm(pooled)
    torch.testing.assert_close(standardized.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized.var(0, unbiased=False), torch.ones(3), atol=1e-3,
                               rtol=0)
    model(batch[0][:1])  # a batch of one trains too (running statistics)
    model.eval()
    model(batch[0][:1])
    assert isinstance(build_method("adafilter", source, 3).gates.embed[0][0], nn.Identity)


def test_straight_through_gate_has_the_sigmoid_gradient():
    logits = torch.linspace(-3, 3, 13, requires_grad=True)
    g = binary_gate(logits, temperature=2.0, estimator="straight-through")
    torch.testing.assert_close(g, (logits > 0).float())
    g.sum().backward()
    s = torch.sigmoid(logits / 2.0)
    torch.testing.assert_close(logits.grad, s * (1 - s) / 2.0)


def test_gumbel_gates_are_random_in_training_and_deterministic_in_evaluation():
    logits = torch.zeros(2000)
    torch.manual_seed(0)
    sampled = binary_gate(logits, estimator="gumbel")
    assert 0.45 < sampled.mean().item() < 0.55  # σ(0) = 0.5: either path, half the time
    strong = binary_gate(torch.full((2000,), 3.0), estimator="gumbel")
    assert 0.9 < strong.mean().item() < 0.99  # P(logistic noise > −3) = σ(3) ≈ 0.95
    ev = torch.tensor([-0.1, 0.0, 0.2, 5.0])
    assert binary_gate(ev, training=False).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_evaluation_decision_is_the_threshold_at_one_half(source, batch, trained):
    model = trained("adafilter").eval()
    model(batch[0])
    first = {k: v.clone() for k, v in model.last_decisions.items()}
    model(batch[0])
    for key, value in model.last_decisions.items():
        assert torch.equal(value, first[key]), key
    # recompute the decisions of the first layer by hand: [σ(Q·h) > 0.5]
    logits, _ = model.gates.step(0, batch[0], None)
    torch.testing.assert_close(first["gate/stem.0"], (torch.sigmoid(logits[0]) > 0.5).float())


def test_paired_convolution_matches_two_convolutions_and_its_gradients():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False).double()
    x = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w_ft = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w_pt = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(8, generator=g, dtype=torch.float64)
    y = _PairedConv2d.apply(x, w_ft, w_pt, bias, conv)
    expected = torch.cat([F.conv2d(x, w_ft, None, 2, 1), F.conv2d(x, w_pt, None, 2, 1)], 1)
    torch.testing.assert_close(y, expected + bias[:, None, None])
    assert torch.autograd.gradcheck(lambda x, w: _PairedConv2d.apply(x, w, w_pt, bias, conv),
                                    (x, w_ft))


def test_all_pretrained_reproduces_the_source_network(source, batch, trained):
    model = trained("adafilter")
    x = batch[0]
    assert not torch.equal(model.finetuned.blocks[0].conv1.weight,
                           source.blocks[0].conv1.weight)
    for mode in (False, True):  # frozen_bn="eval": the pre-trained path ignores train mode
        model.train(mode)
        with torch.no_grad(), model.forcing("pretrained"):
            maps = model.feature_maps(x)
        for ours, theirs in zip(maps, source.feature_maps(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        assert all(g.eq(0).all() for g in model.last_decisions.values())


def test_all_finetuned_reproduces_a_plainly_finetuned_copy(source, batch, trained):
    model = trained("adafilter")
    plain = build_method("finetune", source, 3)
    plain.backbone.load_state_dict(model.finetuned.state_dict())
    plain.head.load_state_dict(model.head.state_dict())
    x, y = batch
    for mode in (False, True):
        model.train(mode), plain.train(mode)
        with model.forcing("finetuned"):
            maps = model.feature_maps(x)
            ours = model.loss_terms(x, y)["ce"]
        for a, b in zip(maps, plain.backbone.feature_maps(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert all(g.eq(1).all() for g in model.last_decisions.values())
        theirs = plain.loss_terms(x, y)["ce"]
        torch.testing.assert_close(ours, theirs)
    # same loss, same gradients for every fine-tuned weight (the paired conv's backward)
    model.zero_grad(), plain.zero_grad()
    ours.backward(), theirs.backward()
    for (name, p), q in zip(model.finetuned.named_parameters(), plain.backbone.parameters(),
                            strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_pretrained_weights_never_change(source, batch):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(24, 3, 32, 32, generator=g), torch.arange(24) % 3)
    source_before = copy.deepcopy(source.state_dict())
    model = build_method("adafilter", source, 3)
    pretrained_before = copy.deepcopy(model.pretrained.state_dict())
    finetuned_before = copy.deepcopy(model.finetuned.state_dict())
    fit(model, data, data, TrainConfig(epochs=2, batch_size=8), device="cpu", progress=False)
    for key, value in model.pretrained.state_dict().items():  # BN statistics included
        assert torch.equal(value, pretrained_before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in model.pretrained.parameters())
    assert any(not torch.equal(v, finetuned_before[k])
               for k, v in model.finetuned.state_dict().items())
    for key, value in source.state_dict().items():
        assert torch.equal(value, source_before[key]), key


def test_frozen_batchnorm_batch_mode_uses_batch_statistics(source, batch):
    model = build_method("adafilter", source, 3, frozen_bn="batch").train()
    reference = copy.deepcopy(source).train()
    with torch.no_grad(), model.forcing("pretrained"):
        maps = model.feature_maps(batch[0])
    torch.testing.assert_close(maps[-1], reference.feature_maps(batch[0])[-1],
                               rtol=1e-4, atol=1e-5)
    assert not torch.equal(model.pretrained.module.stem[1].running_mean,
                           source.stem[1].running_mean)
    assert all(not p.requires_grad for p in model.pretrained.parameters())


def test_param_groups_cover_every_trainable_parameter_once(source):
    model = build_method("adafilter", source, 3, gate_lr=0.003)
    groups = model.param_groups(0.05)
    assert [g["lr"] for g in groups] == [0.05, 0.003]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.gates.parameters()}
    assert not trainable & {id(p) for p in model.pretrained.parameters()}


def test_usage_penalty_follows_its_formula(source, batch):
    model = build_method("adafilter", source, 3, usage_weight=2.0, usage_target=0.25).train()
    terms = model.loss_terms(*batch)
    usage = torch.tensor([model.last_decisions[f"gate/{n}"].mean() for n in model.layer_names])
    torch.testing.assert_close(terms["usage_penalty"], 2.0 * (usage - 0.25).pow(2).mean())
    assert set(build_method("adafilter", source, 3).train().loss_terms(*batch)) == {"ce"}
    assert set(model.eval().loss_terms(*batch)) == {"ce"}


def test_epoch_record_reports_each_layer(source, batch):
    model = build_method("adafilter", source, 3).eval()
    model(batch[0])
    record = model.epoch_record(model.last_decisions, batch[1])
    assert len(record["ft_fraction"]) == len(record["varying_filters"]) == len(model.layers)
    assert all(0 <= v <= 1 for v in record["ft_fraction"] + record["varying_filters"])
    gates = torch.cat([model.last_decisions[f"gate/{n}"] for n in model.layer_names], 1)
    assert record["ft_mean"] == pytest.approx(gates.mean().item())
    assert filters_that_vary(torch.tensor([[0., 1., 1.], [0., 0., 1.]])).tolist() == [
        False, True, False]


@pytest.mark.parametrize("name, value, message", [
    ("hidden", 0, "hidden"),
    ("hidden", 2.5, "hidden"),
    ("gate_input", "normalized", "gate_input must be one of raw, standardized"),
    ("temperature", 0.0, "temperature"),
    ("estimator", "softmax", "estimator must be one of straight-through, gumbel"),
    ("gate_lr", -0.1, "gate_lr"),
    ("usage_target", 1.5, "usage_target"),
    ("usage_weight", -1.0, "usage_weight"),
    ("frozen_bn", "train", "frozen_bn"),
    ("tau", 1.0, "unknown hyperparameter 'tau'"),
])
def test_bad_hyperparameters_raise_clear_errors(source, name, value, message):
    with pytest.raises(ValueError, match=message):
        build_method("adafilter", source, 3, **{name: value})


def test_direct_construction_and_forcing_errors(source):
    with pytest.raises(ValueError, match=r"temperature must be in \[0.01, 100\]"):
        AdaFilter(source, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="frozen_bn must be one of eval, batch"):
        AdaFilter(source, 3, frozen_bn="none")
    model = AdaFilter(source, 3)
    with pytest.raises(ValueError, match="path must be one of pretrained, finetuned"):
        with model.forcing("ft"):
            pass
    assert model.force_path is None


def test_backbones_it_cannot_gate_are_refused(source):
    grouped = copy.deepcopy(source)
    grouped.blocks[1].conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
    with pytest.raises(ValueError, match="block 1 .BasicBlock. is not a ResNet block"):
        build_method("adafilter", grouped, 3)
    odd_stem = Backbone(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), list(source.blocks),
                        source.block_channels, source.stage_ends)
    with pytest.raises(ValueError, match="stem layer 0"):
        build_method("adafilter", odd_stem, 3)


def test_command_line_strings_parse():
    values = get_method("adafilter").check({"hidden": "16", "estimator": "straight-through"})
    assert values["hidden"] == 16 and values["estimator"] == "straight-through"


def test_torchvision_resnet18_shapes_and_pretrained_path():
    torch.manual_seed(0)
    source = torchvision_resnet("resnet18").eval()
    model = build_method("adafilter", source, 5).train()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    sum(model.loss_terms(x, y).values()).backward()
    assert model.finetuned.blocks[0].conv1.weight.grad is not None
    assert len(model.layers) == 1 + 8 * 2 + 3  # stem, 8 blocks × 2 convs, 3 shortcuts
    assert model.last_decisions["gate/block7.conv2"].shape == (4, 512)
    model.eval()
    with torch.no_grad(), model.forcing("pretrained"):
        torch.testing.assert_close(model.feature_maps(x)[-1], source.feature_maps(x)[-1],
                                   rtol=1e-4, atol=1e-4)
    assert model(x).shape == (4, 5)


def test_torchvision_bottleneck_gates_conv3():
    source = torchvision_resnet("resnet50").eval()
    model = build_method("adafilter", source, 5)
    names = model.layer_names
    assert names[:5] == ["stem.0", "block0.conv1", "block0.downsample", "block0.conv2",
                         "block0.conv3"]
    assert len(names) == 1 + 16 * 3 + 4
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    assert model(x).shape == (2, 5)
    assert model.last_decisions["gate/block15.conv3"].shape == (2, 2048)


def _evaluation(gates: dict, y):
    from tlgates.train import Evaluation
    n = len(y)
    return Evaluation(0.5, torch.zeros(n, 3), torch.tensor(y), gates)


def test_usage_and_agreement_tables_follow_their_definitions():
    from tlgates.plotting.adafilter import decision_agreement, usage_table
    gates = {"gate/a": torch.tensor([[1., 0.], [1., 1.], [1., 0.]]),
             "gate/b": torch.tensor([[0., 0., 0.], [0., 0., 0.], [1., 1., 1.]])}
    evaluation = _evaluation(gates, [0, 0, 1])
    table = usage_table(evaluation, ["a", "b"])
    assert table.loc["a", "fine-tuned"] == pytest.approx(4 / 6)
    assert table.loc["a", "always fine-tuned"] == 0.5
    assert table.loc["a", "vary by example"] == 0.5
    assert table.loc["b", "always pre-trained"] == 0 and table.loc["b", "vary by example"] == 1
    agreement = decision_agreement(evaluation, ["a", "b"])
    # layer a: examples 0 and 1 (same class) agree on 1 of 2 filters; 0–2 on 2, 1–2 on 1
    assert agreement.loc["a", "same class"] == pytest.approx(0.5)
    assert agreement.loc["a", "different classes"] == pytest.approx(0.75)
    assert agreement.loc["b", "same class"] == 1.0 and agreement.loc["b", "different classes"] == 0


def test_plots_return_figures(source, batch, trained):
    from matplotlib.figure import Figure

    from tlgates.plotting import adafilter as plots
    from tlgates.train import evaluate
    model = trained("adafilter")
    data = TensorDataset(*batch)
    evaluation = evaluate(model, data)
    names = model.layer_names
    wiped = plots.evaluate_without_memory(model, data)
    assert "step" not in vars(model.gates)  # the method is restored
    frame = path_accuracies(model, data)
    assert list(frame.index) == ["learned", "all pre-trained", "all fine-tuned"]
    history = fit(model, data, data, TrainConfig(epochs=2, batch_size=8), device="cpu",
                  progress=False).frame()
    figures = [plots.plot_layer_usage(evaluation, names),
               plots.plot_class_usage(evaluation, names, ["a", "b", "c"]),
               plots.plot_usage_over_training(history, names),
               plots.plot_filter_map(evaluation, batch[0], 0, names),
               plots.plot_filter_map_pair(evaluation, batch[0], 0, 1, names),
               plots.plot_agreement(evaluation, names),
               plots.plot_layer_correlation(evaluation, names),
               plots.plot_memory_ablation(evaluation, wiped, names),
               plot_path_accuracies(frame)]
    assert all(isinstance(f, Figure) for f in figures)
