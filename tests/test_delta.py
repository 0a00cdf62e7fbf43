"""Semantic tests of DELTA (arXiv 1901.09229): Ω, the channel attention, its cache, the method."""
import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

from tlgates.backbones import tiny_resnet, torchvision_resnet
from tlgates.methods import build_method, get_method
from tlgates.methods.delta import (
    DELTA, ChannelAttention, FeatureMapRegularization, attention_weights, channel_attention,
    channel_loss_rises, channel_loss_rises_naive, fit_probe, stage_maps,
)
from tlgates.train import TrainConfig, fit, seed_everything


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Channel attention caches go to a temporary folder, never to the checkout's data/."""
    monkeypatch.setenv("TLGATES_DATA", str(tmp_path))
    return tmp_path


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 3, 32, 32, generator=g)
    return TensorDataset(x, torch.arange(24) % 3)


# ----------------------------------------------------------------------------- the regularizer


def test_omega_is_the_weighted_mean_squared_distance():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3, 8, 8), (5, 6, 4, 2)]
    src = [torch.randn(s, generator=g) for s in shapes]
    tgt = [torch.randn(s, generator=g) for s in shapes]
    weights = [torch.rand(s[1], generator=g) * 2 for s in shapes]
    reg = FeatureMapRegularization(weights)
    expected = 0.0
    for s, t, w in zip(src, tgt, weights):
        for b in range(s.shape[0]):
            for c in range(s.shape[1]):
                expected += w[c] * ((t[b, c] - s[b, c]) ** 2).sum() / (s.shape[2] * s.shape[3])
    expected /= 5  # a mean over the batch, not a sum
    torch.testing.assert_close(reg(src, tgt), expected)
    # the same examples twice: the same Ω (α does not depend on the batch size)
    torch.testing.assert_close(reg([torch.cat([s, s]) for s in src],
                                   [torch.cat([t, t]) for t in tgt]), expected)
    # the spatial maps average to the per-layer distances
    spatial = reg.spatial(src, tgt)
    distances = reg.distances(src, tgt)
    for layer, m in enumerate(spatial):
        torch.testing.assert_close(m.mean(dim=(1, 2)), distances[:, layer])
    uniform = reg.spatial(src, tgt, weighted=False)
    torch.testing.assert_close(uniform[0], (tgt[0] - src[0]).pow(2).sum(1))


def test_no_gradient_reaches_the_source_maps():
    src = torch.randn(2, 3, 4, 4, requires_grad=True)
    tgt = torch.randn(2, 3, 4, 4, requires_grad=True)
    FeatureMapRegularization([torch.ones(3)])([src], [tgt]).backward()
    assert src.grad is None
    torch.testing.assert_close(tgt.grad, 2 * (tgt - src).detach() / 16 / 2)


def test_regularizer_rejects_bad_weights_and_maps():
    with pytest.raises(ValueError, match="one tensor per"):
        FeatureMapRegularization([])
    reg = FeatureMapRegularization([torch.ones(3)])
    with pytest.raises(ValueError, match="≥ 0"):
        reg.set_weights([torch.tensor([1.0, -1.0, 1.0])])
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        reg.set_weights([torch.ones(4)])
    with pytest.raises(ValueError, match="1 layers"):
        reg.set_weights([torch.ones(3), torch.ones(3)])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reg([torch.zeros(2, 4, 5, 5)], [torch.zeros(2, 4, 5, 5)])
    with pytest.raises(ValueError, match="expected 1 source"):
        reg([], [])


# ----------------------------------------------------------------------------- channel attention


def test_attention_weights_are_positive_and_sum_to_the_channels():
    g = torch.Generator().manual_seed(0)
    for rises in (torch.randn(7, generator=g, dtype=torch.float64), torch.zeros(5),
                  torch.tensor([3.0]), torch.tensor([-1.0, 0.0, 10.0])):
        w = attention_weights(rises, 5.0)
        assert (w > 0).all() and w.shape == rises.shape
        torch.testing.assert_close(w.sum(), torch.tensor(float(len(rises))))
    torch.testing.assert_close(attention_weights(torch.zeros(5)), torch.ones(5))
    rises = torch.tensor([0.0, 1.0, 2.0, 10.0])
    w = attention_weights(rises)
    assert torch.equal(torch.argsort(w), torch.argsort(rises))  # larger rise, larger weight
    sharp, flat = attention_weights(rises, 0.5), attention_weights(rises, 500.0)
    assert sharp.max() > w.max() > flat.max()
    torch.testing.assert_close(flat, torch.ones(4), atol=1e-2, rtol=0)
    # standardised: shifting or scaling the rises changes nothing
    torch.testing.assert_close(attention_weights(3 * rises + 7), w)
    with pytest.raises(ValueError, match="temperature"):
        attention_weights(rises, 0.0)


def test_fast_loss_rises_equal_the_naive_recipe(source, data):
    blocks = source.stage_ends
    feats = source(data.tensors[0]).detach()
    head = fit_probe(feats, data.tensors[1], 3)
    fast, base_fast = channel_loss_rises(source, head, data, blocks, batch_size=5,
                                         max_examples=9)
    # a small chunk forces several passes per block
    chunked, _ = channel_loss_rises(source, head, data, blocks, batch_size=4, max_examples=9,
                                    chunk_elements=2000)
    naive, base_naive = channel_loss_rises_naive(source, head, data, blocks, batch_size=5,
                                                 max_examples=9)
    assert base_fast == pytest.approx(base_naive, abs=1e-6)
    for f, c, n, b in zip(fast, chunked, naive, blocks):
        assert f.shape == (source.block_channels[b],)
        torch.testing.assert_close(f, n, atol=1e-6, rtol=0)
        torch.testing.assert_close(c, n, atol=1e-6, rtol=0)
        torch.testing.assert_close(attention_weights(f), attention_weights(n), atol=1e-5,
                                   rtol=0)
    # a rise is a rise: zeroing a channel by hand gives the same loss change
    b, c = blocks[1], 2
    def zero(module, inputs, out):
        out = out.clone()
        out[:, c] = 0
        return out
    x, y = data.tensors[0][:9], data.tensors[1][:9]
    base = torch.nn.functional.cross_entropy(head(source(x)), y)
    handle = source.blocks[b].register_forward_hook(zero)
    rise = torch.nn.functional.cross_entropy(head(source(x)), y) - base
    handle.remove()
    assert fast[1][c].item() == pytest.approx(rise.item(), abs=1e-6)


def test_probe_is_deterministic_and_draws_no_random_numbers(source, data):
    feats = source(data.tensors[0]).detach()
    state = torch.get_rng_state()
    a = fit_probe(feats, data.tensors[1], 3)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_probe(feats, data.tensors[1], 3)
    assert torch.equal(a.weight, b.weight)
    accuracy = (a(feats).argmax(1) == data.tensors[1]).float().mean()
    assert accuracy > 0.5  # 24 examples, 3 classes, 32 features: it fits


def test_channel_attention_is_cached_and_rebuilt_when_corrupt(source, data, cache_dir):
    first = channel_attention(source, data, 3)
    assert not first.from_cache and first.examples == 24
    assert first.blocks == source.stage_ends
    files = list(cache_dir.glob("delta-attention-*.pt"))
    assert len(files) == 1
    second = channel_attention(source, data, 3)
    assert second.from_cache
    for a, b in zip(first.rises, second.rises):
        assert torch.equal(a, b)
    for w, b in zip(second.weights(), source.stage_ends):
        assert (w >= 0).all()
        assert w.sum().item() == pytest.approx(source.block_channels[b], rel=1e-5)
    files[0].write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="is corrupt; computing it again"):
        third = channel_attention(source, data, 3)
    assert not third.from_cache
    torch.testing.assert_close(third.rises, first.rises)
    assert channel_attention(source, data, 3).from_cache  # rewritten
    # another training set, other source weights or other settings: another entry
    other = TensorDataset(data.tensors[0].flip(0), data.tensors[1])
    assert not channel_attention(source, other, 3).from_cache
    assert not channel_attention(source, data, 3, probe_decay=0.1).from_cache
    changed = tiny_resnet(width=8).eval()
    assert not channel_attention(changed, data, 3).from_cache
    assert len(list(cache_dir.glob("delta-attention-*.pt"))) == 4
    # the fast and naive recipes agree through the public entry point too
    naive = channel_attention(source, data, 3, cache=False, fast=False, max_examples=6)
    fast = channel_attention(source, data, 3, cache=False, max_examples=6)
    for a, b in zip(naive.weights(), fast.weights()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_channel_attention_restores_mode_and_rejects_bad_input(source, data):
    source.train()
    channel_attention(source, data, 3, cache=False)
    assert source.training and all(m.training for m in source.modules())
    with pytest.raises(ValueError, match="labels must lie"):
        channel_attention(source, data, 2, cache=False)
    with pytest.raises(ValueError, match="blocks must be"):
        channel_attention(source, data, 3, blocks=[7])
    with pytest.raises(ValueError, match="probe_decay"):
        channel_attention(source, data, 3, probe_decay=-1.0)
    with pytest.raises(TypeError, match="Backbone"):
        channel_attention(torch.nn.Conv2d(3, 3, 1), data, 3)
    partial = channel_attention(source, data, 3, max_examples=5, cache=False)
    assert partial.examples == 5


# ----------------------------------------------------------------------------- the method


def test_omega_is_zero_for_identical_networks_in_the_same_mode(source, data):
    x, y = data.tensors[0][:8], data.tensors[1][:8]
    model = build_method("delta", source, 3, alpha=1.0)
    model.set_attention(channel_attention(source, data, 3))
    model.eval()
    assert model.distances(x).shape == (8, len(source.stage_ends))
    assert model.distances(x).abs().max() == 0
    model.train()  # source_bn="batch": both normalise with the batch statistics
    assert model.loss_terms(x, y)["delta"].item() == 0
    # different modes: the source copy normalises with its glyph statistics, the target not
    mixed = build_method("delta", source, 3, alpha=1.0, source_bn="eval").train()
    assert mixed.loss_terms(x, y)["delta"].item() > 0


def test_omega_is_positive_after_a_step_and_the_source_stays_put(source, data, one_step):
    x, y = data.tensors[0][:8], data.tensors[1][:8]
    original = {k: v.clone() for k, v in source.state_dict().items()}
    model = build_method("delta", source, 3, alpha=1.0)
    model.on_fit_start(data)
    before = {k: v.clone() for k, v in model.source.state_dict().items()}
    one_step(model, x, y)
    assert all(p.grad is None for p in model.source.parameters())
    assert not any(p.requires_grad for p in model.source.parameters())
    assert model.loss_terms(x, y)["delta"].item() > 0
    model.train()
    assert (model.distances(x) > 0).all()  # measured in eval mode, the mode restored
    assert model.training and not model.source.training  # the reference stays in eval
    after = model.source.state_dict()
    for name in before:  # with source_bn="batch" too, the reference stays the source network
        assert torch.equal(before[name], after[name]), name
    for name, value in source.state_dict().items():  # the builder's source is untouched
        assert torch.equal(value, original[name]), name


def test_gradient_reaches_the_target_not_the_source(source, data):
    x, y = data.tensors[0][:8], data.tensors[1][:8]
    model = build_method("delta", source, 3, alpha=1.0, source_bn="eval").train()
    model.loss_terms(x, y)["delta"].backward()
    assert all(p.grad is None for p in model.source.parameters())
    assert model.backbone.blocks[0].conv1.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # Ω does not involve the head


def test_one_source_pass_per_step(source, data):
    model = build_method("delta", source, 3).train()
    calls = {"source": 0, "target": 0}
    model.source.module.stem.register_forward_hook(lambda *a: calls.__setitem__(
        "source", calls["source"] + 1))
    model.backbone.stem.register_forward_hook(lambda *a: calls.__setitem__(
        "target", calls["target"] + 1))
    model.loss_terms(data.tensors[0][:8], data.tensors[1][:8])
    assert calls == {"source": 1, "target": 1}
    zero = build_method("delta", source, 3, alpha=0.0).train()
    zero.source.module.stem.register_forward_hook(lambda *a: pytest.fail("source ran"))
    assert set(zero.loss_terms(data.tensors[0][:8], data.tensors[1][:8])) == {"ce", "head_l2"}


def test_attention_weighs_channels_and_fml2_does_not(source, data):
    delta = build_method("delta", source, 3)
    fml2 = build_method("fml2", source, 3)
    delta.on_fit_start(data)
    fml2.on_fit_start(data)
    assert fml2.attention is None
    for w in fml2.regularizer.channel_weights:
        assert torch.equal(w, torch.ones_like(w))
    expected = channel_attention(source, data, 3).weights(5.0)
    for w, e, b in zip(delta.regularizer.channel_weights, expected, source.stage_ends):
        torch.testing.assert_close(w, e)
        assert w.sum().item() == pytest.approx(source.block_channels[b], rel=1e-5)
        assert w.std() > 0
    hot = build_method("delta", source, 3, temperature=0.1)
    hot.on_fit_start(data)
    assert hot.regularizer.channel_weights[0].max() > delta.regularizer.channel_weights[0].max()


def _fit(method, source, data, seed=0, **params):
    seed_everything(seed)
    model = build_method(method, source, 3, **params)
    fit(model, data, None, TrainConfig(epochs=2, batch_size=8), seed=seed, device="cpu",
        progress=False)
    return model


@pytest.mark.parametrize("baseline, params", [
    ("finetune", {}),
    ("l2sp", {"alpha": 0.0, "beta": 0.05}),
])
def test_alpha_zero_trains_exactly_like_finetuning(source, data, baseline, params):
    beta = params.get("beta", 0.0)
    reference = _fit(baseline, source, data, **params)
    delta = _fit("delta", source, data, alpha=0.0, beta=beta)
    for name, value in reference.state_dict().items():
        if name.startswith(("backbone.", "head.")):
            assert torch.equal(value, delta.state_dict()[name]), name
    # and α > 0 does change the training
    regularised = _fit("delta", source, data, alpha=1.0, beta=beta)
    assert not torch.equal(regularised.head.weight, reference.head.weight)


@pytest.mark.parametrize("with_val", [True, False])
def test_omega_is_recorded_per_epoch(source, data, with_val):
    """Ω comes from the training steps, so it is recorded with or without a validation set."""
    seed_everything(0)
    model = build_method("delta", source, 3, alpha=0.5)
    history = fit(model, data, data if with_val else None, TrainConfig(epochs=3, batch_size=8),
                  device="cpu", progress=False)
    frame = history.frame()
    for column in ("delta", "head_l2", "omega", "omega_layers"):
        assert column in frame, column
    assert len(frame["omega_layers"][0]) == len(source.stage_ends)
    assert (frame["omega"] > 0).all()
    torch.testing.assert_close(torch.tensor(frame["omega_layers"].map(sum).values),
                               torch.tensor(frame["omega"].values))
    torch.testing.assert_close(torch.tensor(frame["delta"].values),
                               0.5 * torch.tensor(frame["omega"].values), rtol=1e-5, atol=0)


def test_bad_hyperparameters_give_clear_errors(source):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 100\]"):
        build_method("delta", source, 3, alpha=-1.0)
    with pytest.raises(ValueError, match="temperature must be"):
        build_method("delta", source, 3, temperature=0.0)
    with pytest.raises(ValueError, match="source_bn must be one of eval, batch"):
        build_method("fml2", source, 3, source_bn="train")
    with pytest.raises(ValueError, match="unknown hyperparameter 'temperature'"):
        build_method("fml2", source, 3, temperature=2.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 100\], got nan"):
        DELTA(source, 3, alpha=float("nan"), beta=0.0)
    with pytest.raises(ValueError, match=r"temperature must be in \[0.01, 1000\]"):
        DELTA(source, 3, alpha=1.0, beta=0.0, temperature=-1.0)
    with pytest.raises(ValueError, match="blocks must be distinct"):
        DELTA(source, 3, alpha=1.0, beta=0.0, blocks=[1, 1])
    model = DELTA(source, 3, alpha=1.0, beta=0.0, blocks=[0, 2])
    attention = ChannelAttention([1, 3], [torch.zeros(8), torch.zeros(32)], 0.0, 1)
    with pytest.raises(ValueError, match="regularises \\[0, 2\\]"):
        model.set_attention(attention)
    assert get_method("delta").check({"alpha": "0.5"})["alpha"] == 0.5


def test_chosen_blocks_and_an_early_stop_of_the_source_pass(source, data):
    model = DELTA(source, 3, alpha=1.0, beta=0.0, blocks=[0, 2])
    calls = []
    model.source.module.blocks[3].register_forward_hook(lambda *a: calls.append(1))
    model.on_fit_start(data)
    calls.clear()
    terms = model.train().loss_terms(data.tensors[0][:4], data.tensors[1][:4])
    assert calls == []  # the source stops after the last regularised block
    assert terms["delta"].item() == 0
    assert [len(w) for w in model.regularizer.channel_weights] == [8, 32]


def test_torchvision_resnet18_shapes():
    torch.manual_seed(0)
    source = torchvision_resnet("resnet18").eval()
    data = TensorDataset(torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 4]))
    model = build_method("delta", source, 5)
    model.on_fit_start(data)
    assert model.blocks == [1, 3, 5, 7]
    assert [len(w) for w in model.regularizer.channel_weights] == [64, 128, 256, 512]
    maps = stage_maps(model.source.module, data.tensors[0][:2], model.blocks)
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    model.train()
    x, y = data.tensors[0][:4], data.tensors[1][:4]
    terms = model.loss_terms(x, y)
    assert set(terms) == {"ce", "delta", "head_l2"}
    assert terms["delta"].item() == pytest.approx(0.0, abs=1e-6)
    sum(terms.values()).backward()
    assert model.backbone.blocks[0].conv1.weight.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.eval()
        assert model(x).shape == (4, 5)
    assert model.distances(x).shape == (4, 4)
