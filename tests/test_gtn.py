"""Semantic tests of GTN (arXiv 1810.12521): gate range, equivalences, aux head, warm-up."""
import pytest
import torch
from torch.utils.data import TensorDataset

from tlgates.backbones import tiny_resnet, torchvision_resnet
from tlgates.methods import build_method, get_method
from tlgates.methods.gtn import ABLATION, FeatureGate, GatedTransferNetwork
from tlgates.train import TrainConfig, fit


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and far faster on a loaded, oversubscribed CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gates_lie_strictly_between_zero_and_one(source, batch):
    model = build_method("gtn", source, 3)
    model.eval()
    logits = model(batch[0])
    gate = model.last_decisions["gate"]
    assert logits.shape == (8, 3)
    assert gate.shape == (8, source.feature_dim)
    assert model.last_decisions["feature"].shape == (8, source.feature_dim)
    assert ((gate > 0) & (gate < 1)).all()
    # even with extreme features the sigmoid never reaches 0 or 1 exactly in float64
    gate_module = FeatureGate(16, reduction=4, dropout=0.0).double().eval()
    extreme = 50 * torch.randn(32, 16, dtype=torch.float64)
    values = gate_module(extreme)
    assert ((values > 0) & (values < 1)).all()


def test_gate_bottleneck_is_dim_over_reduction(source):
    model = build_method("gtn", source, 3, reduction=4)
    dim = source.feature_dim
    assert model.gate.squeeze.weight.shape == (dim // 4, dim)
    assert model.gate.excite.weight.shape == (dim, dim // 4)
    assert build_method("gtn", source, 3, reduction=1000).gate.squeeze.out_features == 1


def test_gate_changes_the_logits_as_g_times_f(source, batch):
    model = build_method("gtn", source, 3).eval()
    logits = model(batch[0])
    f, g = model.last_decisions["feature"], model.last_decisions["gate"]
    torch.testing.assert_close(logits, model.head(g * f))
    assert not torch.allclose(logits, model.head(f))


def _finetune_and_gtn_with_same_weights(source, **gtn_params):
    torch.manual_seed(0)
    finetune = build_method("finetune", source, 3)
    gtn = build_method("gtn", source, 3, gate=False, aux_weight=0.0, dropout=0.0,
                       warmup_epochs=0, **gtn_params)
    gtn.head.load_state_dict(finetune.head.state_dict())
    return finetune, gtn


def test_gate_off_and_no_aux_is_plain_finetuning(source, batch, one_step):
    finetune, gtn = _finetune_and_gtn_with_same_weights(source)
    assert gtn.gate is None and gtn.aux_head is None
    finetune.train(), gtn.train()
    torch.testing.assert_close(gtn(batch[0]), finetune(batch[0]))
    terms_gtn, terms_ft = gtn.loss_terms(*batch), finetune.loss_terms(*batch)
    assert set(terms_gtn) == set(terms_ft) == {"ce"}
    torch.testing.assert_close(terms_gtn["ce"], terms_ft["ce"])
    # and they stay equal through training steps (same gradients, same updates)
    for _ in range(3):
        torch.testing.assert_close(one_step(gtn, *batch), one_step(finetune, *batch))
    gtn.eval(), finetune.eval()
    torch.testing.assert_close(gtn(batch[0]), finetune(batch[0]))


def test_gate_forced_to_one_equals_finetuning(source, batch):
    """The gate module present but saturated at 1: the model is fine-tuning again."""
    finetune, gtn = _finetune_and_gtn_with_same_weights(source)
    torch.manual_seed(0)
    gated = build_method("gtn", source, 3, aux_weight=0.0, dropout=0.0)
    gated.head.load_state_dict(finetune.head.state_dict())
    gated.gate.forward = lambda f: torch.ones_like(f)
    for model in (finetune, gated):
        model.eval()
    torch.testing.assert_close(gated(batch[0]), finetune(batch[0]))
    torch.testing.assert_close(gated.loss_terms(*batch)["ce"], finetune.loss_terms(*batch)["ce"])


def test_aux_head_changes_training_but_not_evaluation(source, batch, one_step):
    torch.manual_seed(0)
    with_aux = build_method("gtn", source, 3, aux_weight=0.2, dropout=0.0, warmup_epochs=0)
    without = build_method("gtn", source, 3, aux_weight=0.0, dropout=0.0, warmup_epochs=0)
    without.load_state_dict(with_aux.state_dict(), strict=False)
    with_aux.eval(), without.eval()
    torch.testing.assert_close(with_aux(batch[0]), without(batch[0]))
    assert set(with_aux.loss_terms(*batch)) == {"ce"}  # no aux term at inference
    with_aux.train()
    terms = with_aux.loss_terms(*batch)
    assert set(terms) == {"ce", "aux"} and terms["aux"].item() > 0
    one_step(with_aux, *batch), one_step(without, *batch)
    with_aux.eval(), without.eval()
    assert not torch.allclose(with_aux(batch[0]), without(batch[0]))


def test_aux_loss_is_weighted_cross_entropy_of_the_intermediate_stage(source, batch):
    model = build_method("gtn", source, 3, aux_weight=0.7, aux_stage=1).train()
    x, y = batch
    torch.manual_seed(3)
    terms = model.loss_terms(x, y)
    block = source.stage_ends[1]
    pooled = model.backbone.feature_maps(x)[block].mean(dim=(2, 3))
    expected = 0.7 * torch.nn.functional.cross_entropy(model.aux_head(pooled), y)
    torch.testing.assert_close(terms["aux"], expected)
    assert model.aux_head.in_features == source.block_channels[block]


def test_aux_head_reuses_the_forward_pass(source, batch):
    """One backbone pass per training step, aux head or not."""
    model = build_method("gtn", source, 3).train()
    calls = []
    model.backbone.stem.register_forward_hook(lambda *args: calls.append(1))
    model.loss_terms(*batch)
    assert len(calls) == 1


def test_warmup_freezes_backbone_weights_and_batchnorm_statistics(source, one_step):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(24, 3, 32, 32, generator=g), torch.arange(24) % 3)
    model = build_method("gtn", source, 3, warmup_epochs=2)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    new_before = {k: v.clone() for k, v in model.state_dict().items()
                  if not k.startswith("backbone.")}
    fit(model, data, data, TrainConfig(epochs=2, batch_size=8), device="cpu", progress=False)
    for key, value in model.backbone.state_dict().items():  # BN running stats included
        assert torch.equal(value, backbone_before[key]), key
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in new_before.items())
    # after the warm-up everything trains, BatchNorm statistics included
    model.on_epoch_start(2, 3)
    model.train()
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
    one_step(model, data.tensors[0][:8], data.tensors[1][:8])
    assert not torch.equal(model.backbone.stem[0].weight, backbone_before["stem.0.weight"])
    assert not torch.equal(model.backbone.stem[1].running_mean,
                           backbone_before["stem.1.running_mean"])


def test_warmup_schedule_and_train_mode(source):
    model = build_method("gtn", source, 3, warmup_epochs=3)
    for epoch, frozen in [(0, True), (2, True), (3, False), (10, False)]:
        model.on_epoch_start(epoch, 20)
        model.train()
        assert model.backbone_frozen is frozen
        assert model.backbone.training is not frozen
        assert model.head.training and model.gate.training
        assert all(p.requires_grad is not frozen for p in model.backbone.parameters())


def test_source_is_never_modified(source, batch, one_step):
    before = {k: v.clone() for k, v in source.state_dict().items()}
    for overrides in ABLATION.values():
        one_step(build_method("gtn", source, 3, warmup_epochs=0, **overrides), *batch)
    for key, value in source.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_ablation_variants_have_the_right_parts(source):
    parts = {label: (m.gate is not None, m.aux_head is not None) for label, m in
             ((label, build_method("gtn", source, 3, **o)) for label, o in ABLATION.items())}
    assert parts == {"fine-tune": (False, False), "+ aux": (False, True),
                     "+ gate": (True, False), "GTN": (True, True)}


def test_epoch_record_summarises_gates(source, batch):
    model = build_method("gtn", source, 3).eval()
    model(batch[0])
    record = model.epoch_record(model.last_decisions, batch[1])
    assert 0 < record["gate_mean"] < 1 and 0 <= record["gate_below_half"] <= 1
    assert len(record["gate_channel_mean"]) == source.feature_dim
    no_gate = build_method("gtn", source, 3, gate=False).eval()
    no_gate(batch[0])
    assert no_gate.epoch_record(no_gate.last_decisions, batch[1]) == {}


@pytest.mark.parametrize("name, value, message", [
    ("aux_weight", -0.1, "aux_weight"),
    ("reduction", 0, "reduction"),
    ("dropout", 1.0, "dropout"),
    ("warmup_epochs", -1, "warmup_epochs"),
    ("gate", "maybe", "gate"),
    ("reduction", 2.5, "reduction"),
])
def test_bad_hyperparameters_raise_clear_errors(source, name, value, message):
    with pytest.raises(ValueError, match=message):
        build_method("gtn", source, 3, **{name: value})


def test_bad_aux_stage_and_direct_construction_errors(source):
    with pytest.raises(ValueError, match="aux_stage must be in"):
        build_method("gtn", source, 3, aux_stage=4)
    three_stages = tiny_resnet(width=8, blocks_per_stage=(1, 1, 1))
    with pytest.raises(ValueError, match="aux_stage must index one of the backbone's 3 stages"):
        build_method("gtn", three_stages, 3, aux_stage=3)
    with pytest.raises(ValueError, match="dropout"):
        GatedTransferNetwork(source, 3, dropout=-0.2)
    with pytest.raises(ValueError, match="unknown hyperparameter 'lambda'"):
        build_method("gtn", source, 3, **{"lambda": 0.2})


def test_command_line_strings_parse():
    values = get_method("gtn").check({"gate": "false", "aux_weight": "0"})
    assert values["gate"] is False and values["aux_weight"] == 0.0


def test_torchvision_resnet18_shapes():
    source = torchvision_resnet("resnet18").eval()
    model = build_method("gtn", source, 5).train()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    terms = model.loss_terms(x, y)
    assert set(terms) == {"ce", "aux"}
    assert model.aux_head.in_features == 256  # layer3 of resnet18
    assert model.gate.squeeze.out_features == 512 // 16
    sum(terms.values()).backward()
    assert model.backbone.blocks[0].conv1.weight.grad is not None
    model.eval()
    assert model(x).shape == (4, 5)
    assert model.last_decisions["gate"].shape == (4, 512)


# ----------------------------------------------------------------------------- views

def test_gate_statistics():
    from tlgates.plotting.gtn import (class_mean_gates, gate_variance_shares,
                                      switched_off_channels)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    gates = torch.full((6, 4), 0.5)
    gates[y == 1, 2] = 0.1  # class 1 closes channel 2
    gates[:, 3] = 0.05  # channel 3 is closed for everybody: not class-specific
    torch.testing.assert_close(class_mean_gates(gates, y, 3)[1],
                               torch.tensor([0.5, 0.5, 0.1, 0.05]))
    table = switched_off_channels(gates, y, cls=1, k=2)
    assert table["channel"].iloc[0] == 2
    assert table["gate (class)"].iloc[0] == pytest.approx(0.1)
    assert table["gate (other classes)"].iloc[0] == pytest.approx(0.5)
    fixed = torch.rand(4).expand(6, 4)  # the same gate vector for every example
    assert gate_variance_shares(fixed, y, 3)["channel"] == pytest.approx(1.0)
    per_class = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))[y]
    shares = gate_variance_shares(per_class, y, 3)
    assert shares["example"] == pytest.approx(0.0, abs=1e-6)
    assert shares["class"] > 0
    noisy = torch.rand(6, 4, generator=torch.Generator().manual_seed(1))
    shares = gate_variance_shares(noisy, y, 3)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert min(shares.values()) > 0


def test_views_draw_labelled_figures(source):
    import pandas as pd
    from matplotlib.figure import Figure

    from tlgates.plotting import gtn as views
    from tlgates.train import evaluate

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(30, 3, 32, 32, generator=g), torch.arange(30) % 3
    data = TensorDataset(x, y)
    model = build_method("gtn", source, 3)
    history = fit(model, data, data, TrainConfig(epochs=2, batch_size=10), device="cpu",
                  progress=False)
    evaluation = evaluate(model, data)
    names = ["a", "b", "c"]
    frame = pd.DataFrame({"method": ["fine-tune", "GTN"] * 2, "seed": [0, 0, 1, 1],
                          "accuracy": [0.8, 0.85, 0.82, 0.84]})
    figures = [
        views.plot_gate_distribution(evaluation.decisions["gate"]),
        views.plot_class_gate_heatmap(evaluation.decisions["gate"], y, names),
        views.plot_class_gate_heatmap(evaluation.decisions["gate"], y, names, relative=True),
        views.plot_switched_off(evaluation, x, 1, k=2, n_images=3, class_names=names),
        views.plot_example(model, evaluation, x, 4, names),
        views.plot_ablation(frame, baseline=("finetune", 0.83)),
        views.plot_gate_epochs(history.frame()),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes), "untitled view"
        labelled = [ax for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel()]
        assert labelled or fig.get_suptitle(), "a view without axis labels"
    no_gate = build_method("gtn", source, 3, gate=False).eval()
    with pytest.raises(ValueError, match="no gate"):
        views.plot_example(no_gate, evaluate(no_gate, data), x, 0)
