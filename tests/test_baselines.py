import pytest
import torch
from torch.utils.data import TensorDataset

from tlgates.methods import METHODS, Frozen, Param, build_method, get_method
from tlgates.train import TrainConfig, fit


def test_baselines_are_registered():
    assert {"scratch", "linear", "finetune", "l2", "l2sp"} <= set(METHODS)


def test_methods_never_modify_the_source(source, batch, one_step):
    before = {k: v.clone() for k, v in source.state_dict().items()}
    for name in ("scratch", "linear", "finetune", "l2", "l2sp"):
        one_step(build_method(name, source, 3), *batch)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_l2sp_is_zero_at_start_and_positive_after_a_step(source, batch, one_step):
    model = build_method("l2sp", source, 3, alpha=1.0)
    assert model.starting_point_penalty().item() == 0.0
    one_step(model, *batch)
    assert model.starting_point_penalty().item() > 0.0


def test_l2sp_penalty_matches_its_formula(source, batch, one_step):
    model = build_method("l2sp", source, 3, alpha=0.5, beta=0.2)
    one_step(model, *batch)
    expected = sum(((p - q) ** 2).sum() for p, q in
                   zip(model.backbone.parameters(), source.parameters())) / 2
    torch.testing.assert_close(model.starting_point_penalty(), expected)
    terms = model.loss_terms(*batch)
    torch.testing.assert_close(terms["l2sp"], 0.5 * expected)
    torch.testing.assert_close(terms["head_l2"], 0.1 * model.head.weight.pow(2).sum())


def test_linear_probe_leaves_the_backbone_unchanged(source, batch, one_step):
    model = build_method("linear", source, 3)
    assert isinstance(model.backbone, Frozen)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.weight.clone()
    for _ in range(3):
        one_step(model, *batch)
    assert not model.backbone.training  # BatchNorm statistics are not updated
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert not torch.equal(model.head.weight, head_before)


def test_scratch_is_reinitialised(source):
    model = build_method("scratch", source, 3)
    assert not torch.equal(model.backbone.stem[0].weight, source.stem[0].weight)


def test_finetune_learning_rate_groups(source):
    model = build_method("finetune", source, 3, backbone_lr_scale=0.1)
    groups = model.param_groups(0.05)
    assert [g["lr"] for g in groups] == pytest.approx([0.005, 0.05])
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))


def test_l2_uses_weight_decay(source):
    groups = build_method("l2", source, 3, weight_decay=0.02).param_groups(0.05)
    assert all(g["weight_decay"] == 0.02 for g in groups)


def test_bad_method_and_hyperparameters_raise_clear_errors(source):
    with pytest.raises(ValueError, match="unknown method 'nope'.*finetune"):
        build_method("nope", source, 3)
    with pytest.raises(ValueError, match="unknown hyperparameter 'gamma'.*alpha"):
        build_method("l2sp", source, 3, gamma=1)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 100\], got -1"):
        build_method("l2sp", source, 3, alpha=-1)
    with pytest.raises(ValueError, match="alpha must be a float"):
        get_method("l2sp").check({"alpha": "lots"})


def test_param_parsing_from_strings():
    assert Param(1, "n", low=0, high=5).parse("n", "3") == 3
    assert Param(True, "flag").parse("flag", "false") is False
    assert Param("a", "mode", choices=("a", "b")).parse("mode", "b") == "b"
    with pytest.raises(ValueError, match="mode must be one of a, b"):
        Param("a", "mode", choices=("a", "b")).parse("mode", "c")
    with pytest.raises(ValueError, match="n must be a int"):
        Param(1, "n").parse("n", 2.5)


def test_finetune_learns_a_separable_toy_task(source):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.rand(40, 3, 32, 32, generator=g) * 0.2 + y[:, None, None, None] * 0.8
    model = build_method("finetune", source, 2)
    fit(model, TensorDataset(x, y), config=TrainConfig(epochs=5, augment=False),
        progress=False, device="cpu")
    assert (model(x).argmax(1) == y).float().mean() == 1.0


def test_frozen_copy_keeps_source_statistics_unless_asked(source, batch):
    from tlgates.methods import frozen_and_trainable

    block = source.blocks[0]
    frozen, trainable = frozen_and_trainable(block)
    torch.nn.ModuleList([frozen, trainable]).train()  # a parent module switches to training
    assert not frozen.training and trainable.training
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    x = source.stem(batch[0]).detach()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen(x)
    for key, value in frozen.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    torch.testing.assert_close(frozen(x), block(x))  # the source block in eval mode

    batch_mode, _ = frozen_and_trainable(block, batchnorm="batch")
    torch.nn.ModuleList([batch_mode]).train()  # a parent module switches to training
    assert batch_mode.training
    batch_mode(x)
    assert not torch.equal(batch_mode.module.bn1.running_mean, block.bn1.running_mean)
    with pytest.raises(ValueError, match="batchnorm must be one of eval, batch"):
        frozen_and_trainable(block, batchnorm="train")


def test_step_time_benchmark_reports_ratios(source, batch):
    from tlgates.benchmark import step_times

    models = {"finetune": build_method("finetune", source, 3),
              "linear": build_method("linear", source, 3)}
    table = step_times(models, *batch, rounds=2, steps=1, warmup=1)
    assert table.loc["finetune", "ratio to finetune"] == 1.0
    assert table.loc["linear", "ms per step"] > 0
    with pytest.raises(ValueError, match="baseline must be one of the models"):
        step_times(models, *batch, baseline="gtn")
