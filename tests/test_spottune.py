"""Semantic tests of SpotTune (arXiv 1811.08737): routes, equivalences, frozen copies, policy."""
import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from tlgates.backbones import tiny_resnet, torchvision_resnet
from tlgates.methods import build_method, get_method
from tlgates.methods.spottune import SpotTune
from tlgates.train import TrainConfig, evaluate, fit


def test_decisions_are_one_hot_in_training_and_evaluation(source, batch, trained):
    model = trained("spottune")
    for mode in (True, False):
        model.train(mode)
        logits = model(batch[0])
        route = model.last_decisions["route"]
        assert logits.shape == (8, 3)
        assert route.shape == (8, len(source.blocks))
        # the pair (frozen, fine-tuned) = (1 − I, I) is one-hot: I is exactly 0 or 1
        assert ((route == 0) | (route == 1)).all()
        p = model.last_decisions["p_finetune"]
        assert ((p > 0) & (p < 1)).all()


def test_a_training_batch_of_one_image_works(source, batch):
    model = build_method("spottune", source, 3).train()
    terms = model.loss_terms(batch[0][:1], batch[1][:1])
    assert torch.isfinite(sum(terms.values()))


def test_plain_policy_starts_every_route_at_probability_one_half(source, batch):
    model = build_method("spottune", source, 3, policy_norm="none").eval()
    model(batch[0])
    torch.testing.assert_close(model.last_decisions["p_finetune"], torch.full((8, 4), 0.5))


def test_standardised_policy_splits_every_batch(source, batch):
    """``m_l = s·(m₀ − μ)/σ + β_l``: batch mean β_l, spread s, both routes taken per block."""
    model = build_method("spottune", source, 3, policy_scale=4.0).train()
    with torch.no_grad():
        model.policy.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    alpha = model.policy(batch[0])
    margin = alpha[..., 1] - alpha[..., 0]
    torch.testing.assert_close(margin.mean(dim=0), model.policy.bias.detach())
    torch.testing.assert_close(margin.std(dim=0, unbiased=False), torch.full((4,), 4.0),
                               atol=1e-3, rtol=0)
    decisions = margin > 0
    assert decisions.any(dim=0).all() and (~decisions).any(dim=0).all()


def test_frozen_path_is_the_source_network(source, batch, trained):
    """All routes on the frozen copy: every block computes what the source block computes."""
    x = batch[0]
    model = build_method("spottune", source, 3).eval()
    # untrained, the stem is the source's too: the whole backbone is the source network
    torch.testing.assert_close(model(x, routes=torch.zeros(4)), model.head(source(x)))
    model = trained("spottune", steps=3)
    reference = copy.deepcopy(source)
    reference.stem.load_state_dict(model.stem.state_dict())  # the stem is fine-tuned
    for mode in (False, True):
        model.train(mode), reference.train(mode)
        reference.blocks.eval()  # frozen BatchNorm "eval": source statistics
        torch.testing.assert_close(model(x, routes=torch.zeros(4)),
                                   model.head(reference(x)))
    # block by block, with whatever input the block gets
    model.eval()
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
             for b in model.frozen_blocks]
    model(x, routes=torch.tensor([0.0, 1.0, 0.0, 0.0]))
    for hook in hooks:
        hook.remove()
    assert len(seen) == 3
    for l, (h, out) in zip((0, 2, 3), seen):
        torch.testing.assert_close(out, source.blocks[l](h))


def test_finetuned_path_is_plain_finetuning_with_the_same_weights(source, batch, trained):
    model = trained("spottune", steps=3)
    finetune = build_method("finetune", source, 3)
    for l, block in enumerate(model.tuned_blocks):
        finetune.backbone.blocks[l].load_state_dict(block.state_dict())
    finetune.backbone.stem.load_state_dict(model.stem.state_dict())
    finetune.head.load_state_dict(model.head.state_dict())
    x, y = batch
    for mode in (True, False):
        model.train(mode), finetune.train(mode)
        torch.testing.assert_close(model(x, routes=torch.ones(4)), finetune(x))
    # and the same gradients for the same weights
    model.train(), finetune.train()
    model.zero_grad(), finetune.zero_grad()
    torch.nn.functional.cross_entropy(model(x, routes=torch.ones(4)), y).backward()
    finetune.loss_terms(x, y)["ce"].backward()
    torch.testing.assert_close(model.tuned_blocks[2].conv1.weight.grad,
                               finetune.backbone.blocks[2].conv1.weight.grad)
    torch.testing.assert_close(model.stem[0].weight.grad, finetune.backbone.stem[0].weight.grad)


def test_evaluation_runs_each_example_through_its_chosen_copy_only(source, batch, trained):
    model = trained("spottune").eval()
    x = batch[0]
    routes = torch.randint(0, 2, (8, 4), generator=torch.Generator().manual_seed(3)).float()
    together = model(x, routes=routes)
    alone = torch.cat([model(x[i:i + 1], routes=routes[i]) for i in range(8)])
    torch.testing.assert_close(together, alone)
    calls = []
    model.frozen_blocks[1].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    model(x, routes=routes)
    assert calls == [int((routes[:, 1] == 0).sum())]


@pytest.mark.parametrize("frozen_bn", ["eval", "batch"])
def test_frozen_copies_never_change_during_training(source, frozen_bn):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(24, 3, 32, 32, generator=g), torch.arange(24) % 3)
    model = build_method("spottune", source, 3, frozen_bn=frozen_bn)
    frozen_before = copy.deepcopy(model.frozen_blocks.state_dict())
    tuned_before = copy.deepcopy(model.tuned_blocks.state_dict())
    fit(model, data, data, TrainConfig(epochs=2, batch_size=8), device="cpu", progress=False)
    assert all(not p.requires_grad and p.grad is None for p in model.frozen_blocks.parameters())
    for key, value in model.frozen_blocks.state_dict().items():
        if frozen_bn == "eval" or "running" not in key and "num_batches" not in key:
            assert torch.equal(value, frozen_before[key]), key
    changed = [k for k, v in model.frozen_blocks.state_dict().items()
               if not torch.equal(v, frozen_before[k])]
    # "batch" (the official code) updates the frozen copies' running statistics only
    assert bool(changed) is (frozen_bn == "batch")
    assert all("running" in k or "num_batches" in k for k in changed)
    assert any(not torch.equal(v, tuned_before[k])
               for k, v in model.tuned_blocks.state_dict().items())


def test_frozen_copies_get_no_weight_gradients_but_pass_input_gradients(source, batch):
    model = build_method("spottune", source, 3).train()
    logits = model(batch[0], routes=torch.zeros(4))  # every block on the frozen path
    torch.nn.functional.cross_entropy(logits, batch[1]).backward()
    assert all(p.grad is None for p in model.frozen_blocks.parameters())
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0


def test_policy_network_receives_gradients(source, batch):
    model = build_method("spottune", source, 3, usage_weight=0.0).train()
    torch.manual_seed(0)
    sum(model.loss_terms(*batch).values()).backward()
    for name, p in model.policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_plain_policy_receives_gradients(source, batch, one_step):
    model = build_method("spottune", source, 3, usage_weight=0.0, policy_norm="none").train()
    torch.manual_seed(0)
    sum(model.loss_terms(*batch).values()).backward()
    # the last layer starts at zero, so the gradient reaches it first ...
    assert model.policy.margin.weight.grad.abs().sum() > 0
    one_step(model, *batch)
    model.zero_grad()
    sum(model.loss_terms(*batch).values()).backward()
    # ... and every policy parameter once it has moved
    for name, p in model.policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_evaluation_is_deterministic_unless_sampling_is_asked_for(source, batch, trained):
    data = TensorDataset(*batch)
    model = trained("spottune")
    first, second = evaluate(model, data), evaluate(model, data)
    assert torch.equal(first.decisions["route"], second.decisions["route"])
    assert torch.equal(first.logits, second.logits)
    alpha = model.policy(batch[0])
    expected = (alpha[..., 1] > alpha[..., 0]).float()
    assert torch.equal(first.decisions["route"], expected)
    sampling = build_method("spottune", source, 3, sample_at_eval=True,
                            policy_norm="none").eval()
    routes = []
    for _ in range(5):
        sampling(batch[0])
        routes.append(sampling.last_decisions["route"])
    assert any(not torch.equal(routes[0], r) for r in routes[1:])


def test_temperature_changes_the_gradient_not_the_sampled_route(source, batch):
    grads, routes = [], []
    for tau in (1.0, 5.0):
        torch.manual_seed(0)
        model = build_method("spottune", source, 3, temperature=tau, usage_weight=0.0).train()
        torch.manual_seed(7)
        terms = model.loss_terms(*batch)
        routes.append(model.last_decisions["route"])
        terms["ce"].backward()
        grads.append(model.policy.bias.grad.clone())
    assert torch.equal(routes[0], routes[1])
    assert not torch.allclose(grads[0], grads[1])


def test_usage_target_term(source, batch):
    model = build_method("spottune", source, 3, usage_target=0.25, usage_weight=2.0).train()
    torch.manual_seed(0)
    terms = model.loss_terms(*batch)
    v = model.last_decisions["route"].mean(dim=0)
    torch.testing.assert_close(terms["usage_penalty"], 2.0 * ((v - 0.25) ** 2).mean())
    assert set(terms) == {"ce", "usage_penalty"}
    assert set(build_method("spottune", source, 3, usage_weight=0.0).train()
               .loss_terms(*batch)) == {"ce"}
    assert set(model.eval().loss_terms(*batch)) == {"ce"}


def _sure_policy(model, fine_tuned_blocks):
    """Make the (plain, zero-initialised) policy fine-tune exactly ``fine_tuned_blocks`` for
    every image."""
    with torch.no_grad():
        model.policy.margin.bias.fill_(-50.0)
        model.policy.margin.bias[fine_tuned_blocks] = 50.0


def test_spottune_global_penalty_rewards_the_same_k_blocks_for_all(source, batch):
    model = build_method("spottune", source, 3, usage_weight=0.0, global_weight=1.0,
                         global_blocks=2).train()
    assert model.policy.norm is None  # "auto": SpotTune-Global uses the plain policy
    _sure_policy(model, [1, 3])
    assert model.loss_terms(*batch)["global"].item() < 0.01
    _sure_policy(model, [0, 1, 3])
    torch.testing.assert_close(model.loss_terms(*batch)["global"], torch.tensor(1.0),
                               atol=0.01, rtol=0)
    # half the batch fine-tunes block 0: entropy log 2 for disagreeing examples
    with torch.no_grad():
        model.policy.margin.bias.zero_()
    torch.manual_seed(0)
    terms = model.loss_terms(*batch)
    v = model.last_decisions["route"].mean(dim=0)
    vc = v.clamp(1e-4, 1 - 1e-4)
    entropy = -(vc * vc.log() + (1 - vc) * (1 - vc).log()).sum()
    torch.testing.assert_close(terms["global"], (v.sum() - 2) ** 2 + entropy)


def test_policy_norm_auto_is_batch_unless_spottune_global(source):
    assert build_method("spottune", source, 3).policy.norm is not None
    assert build_method("spottune", source, 3, global_weight=0.5).policy.norm is None
    assert build_method("spottune", source, 3, global_weight=0.5,
                        policy_norm="batch").policy.norm is not None
    assert build_method("spottune", source, 3, policy_norm="none").policy.norm is None


def test_param_groups(source):
    model = build_method("spottune", source, 3, policy_lr=0.02, policy_weight_decay=0.003,
                         lr_scale=0.5)
    groups = model.param_groups(0.06)
    assert [g["lr"] for g in groups] == [0.03, 0.03, 0.02]
    assert groups[2]["weight_decay"] == 0.003
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in model.policy.parameters()}
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    assert not {id(p) for p in model.frozen_blocks.parameters()} & set(grouped)


def test_policy_is_much_smaller_than_the_backbone_and_reads_a_small_image():
    source = tiny_resnet()
    model = build_method("spottune", source, 10)
    policy = sum(p.numel() for p in model.policy.parameters())
    assert policy < 0.05 * sum(p.numel() for p in source.parameters())
    seen = []
    model.policy.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.eval()(torch.rand(2, 3, 32, 32))
    assert seen == [torch.Size([2, 3, 16, 16])]


def test_epoch_record(source, batch):
    model = build_method("spottune", source, 3).eval()
    routes = torch.tensor([[1.0, 0, 0, 1]] * 4 + [[0.0, 0, 1, 1]] * 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    record = model.epoch_record({"route": routes}, y)
    assert record["usage"] == [0.5, 0.0, 0.5, 1.0]
    assert record["usage_by_class"] == [[1.0, 0, 0, 1], [1.0, 0, 0, 1], [0.0, 0, 1, 1]]
    assert record["distinct_routes"] == 2


def test_source_is_never_modified(source, batch, trained):
    before = copy.deepcopy(source.state_dict())
    trained("spottune", frozen_bn="batch", global_weight=0.5)
    for key, value in source.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name, value, message", [
    ("temperature", 0.0, "temperature"),
    ("temperature", -1.0, "temperature"),
    ("policy_lr", 0.0, "policy_lr"),
    ("usage_target", 1.5, "usage_target"),
    ("frozen_bn", "none", "frozen_bn must be one of eval, batch, train"),
    ("sample_at_eval", "maybe", "sample_at_eval"),
    ("policy_width", 2.5, "policy_width"),
    ("policy_norm", "layer", "policy_norm must be one of auto, batch, none"),
    ("lr_scale", 2.0, "lr_scale"),
])
def test_bad_hyperparameters_raise_clear_errors(source, name, value, message):
    with pytest.raises(ValueError, match=message):
        build_method("spottune", source, 3, **{name: value})


def test_direct_construction_and_unknown_option_errors(source):
    with pytest.raises(ValueError, match=r"temperature must be in \[0.001, 100\], got 0.0"):
        SpotTune(source, 3, temperature=0)
    with pytest.raises(ValueError, match=r"global_blocks must be in \[0, 4\]"):
        build_method("spottune", source, 3, global_blocks=5)
    with pytest.raises(ValueError, match="unknown hyperparameter 'tau' for method 'spottune'"):
        build_method("spottune", source, 3, tau=5.0)


def test_command_line_strings_parse():
    values = get_method("spottune").check({"temperature": "5", "frozen_bn": "batch",
                                           "sample_at_eval": "true"})
    assert values["temperature"] == 5.0 and values["frozen_bn"] == "batch"
    assert values["sample_at_eval"] is True


def test_torchvision_resnet18():
    torch.manual_seed(0)
    source = torchvision_resnet("resnet18").eval()
    model = build_method("spottune", source, 5, global_weight=0.1).eval()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(model(x, routes=torch.zeros(len(source.blocks))),
                               model.head(source(x)))
    model.train()
    terms = model.loss_terms(x, y)
    assert set(terms) == {"ce", "usage_penalty", "global"}
    assert model.last_decisions["route"].shape == (4, len(source.blocks))
    sum(terms.values()).backward()
    assert model.tuned_blocks[0].conv1.weight.grad is not None
    assert model.frozen_blocks[0].module.conv1.weight.grad is None
    model.eval()
    assert model(x).shape == (4, 5)
