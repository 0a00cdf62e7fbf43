"""BitFit/BatchNorm-only tuning, LoRA and residual adapters: each starts as the source network,
trains only what it claims, with the parameter count its formula gives, and LoRA's and the
adapters' merged forms compute what their two-path forms compute."""
import copy

import pandas as pd

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from tlgates.backbones import torchvision_resnet
from tlgates.methods import build_method

PEFT = ["bnfit", "lora", "adapter"]


def _norms(backbone):
    return [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]


def _convs(backbone):
    return [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]


def _head_count(source, k):
    return source.feature_dim * k + k


@pytest.mark.parametrize("name", PEFT)
def test_at_initialisation_it_computes_what_the_source_computes(source, batch, name):
    x = batch[0]
    model = build_method(name, source, 3)
    with torch.no_grad():
        assert torch.equal(model.eval().backbone(x), source(x))
        reference = copy.deepcopy(source).train()  # batch statistics, as in training
        assert torch.equal(model.train().backbone(x), reference(x))


@pytest.mark.parametrize("name, trained", [
    ("bnfit", lambda n: ".bn" in n or "stem.1" in n or "downsample.1" in n),
    ("lora", lambda n: "lora_" in n),
    ("adapter", lambda n: ".adapter." in n),
])
def test_only_the_claimed_parameters_receive_gradients(source, batch, name, trained):
    model = build_method(name, source, 3).train()
    model.loss_terms(*batch)["ce"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    claimed = {n for n, _ in model.named_parameters() if n.startswith("head.") or (
        n.startswith("backbone.") and trained(n))}
    assert with_grad == claimed and claimed
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_trainable_parameter_counts_match_their_formulas(source):
    k, head, count = 3, _head_count(source, 3), _trainable
    channels = sum(bn.num_features for bn in _norms(source))
    assert count(build_method("bnfit", source, k)) == 2 * channels + head
    assert count(build_method("bnfit", source, k, shift_only=True)) == channels + head
    r = 3
    lora = sum(r * (c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels)
               for c in _convs(source))
    assert count(build_method("lora", source, k, rank=r)) == lora + head
    adapters = sum(c.in_channels * c.out_channels for c in _convs(source)
                   if c.kernel_size == (3, 3))
    assert count(build_method("adapter", source, k)) == adapters + head


def _perturbed(name, source, **params):
    torch.manual_seed(1)
    model = build_method(name, source, 3, **params)
    with torch.no_grad():  # a trained-looking update (the zero initialisation hides errors)
        for n, p in model.named_parameters():
            if "lora_b" in n or ".adapter." in n:
                p.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["lora", "adapter"])
def test_merged_form_gives_the_same_outputs(source, batch, name):
    x = batch[0]
    two_paths = _perturbed(name, source)
    merged = _perturbed(name, source, merge_for_inference=True)
    with torch.no_grad():
        out = two_paths(x)
        assert not torch.allclose(out, build_method("finetune", source, 3).eval()(x))
        torch.testing.assert_close(merged(x), out, atol=1e-5, rtol=1e-4)
        plain = two_paths.merged_backbone()
        assert not any("lora" in n or "adapter" in n for n, _ in plain.named_modules())
        torch.testing.assert_close(two_paths.head(plain(x)), out, atol=1e-5, rtol=1e-4)


def test_layer_groups_split_the_network(source):
    early = build_method("lora", source, 3, layers="early").adapted
    late = build_method("lora", source, 3, layers="late").adapted
    every = build_method("lora", source, 3).adapted
    assert early and late and sorted(early + late) == sorted(every)
    assert "stem.0" in early and all(name.startswith("blocks.") for name in late)


def test_frozen_weights_never_change(source, batch, one_step):
    for name in PEFT:
        model = build_method(name, source, 3)
        for _ in range(2):
            one_step(model, *batch)
        reference = dict(source.named_parameters())
        for n, p in model.backbone.named_parameters():
            plain = n.replace(".conv.", ".") if n.endswith(".conv.weight") else n
            if plain in reference and not p.requires_grad:
                assert torch.equal(p, reference[plain]), (name, n)


def test_torchvision_resnet18_takes_every_method():
    source = torchvision_resnet("resnet18").eval()
    x = torch.rand(1, 3, 32, 32)
    for name in PEFT:
        model = build_method(name, source, 3).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.backbone(x), source(x))
    assert "stem.0" not in build_method("adapter", source, 3).adapted  # its 7×7 stem conv


def test_unsupported_convolutions_are_named(source):
    from tlgates.methods.adapter import ParallelAdapter
    from tlgates.methods.lora import LoRAConv2d

    with pytest.raises(ValueError, match="groups=1"):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), 2, 2.0)
    with pytest.raises(ValueError, match="3×3 convolution with padding 1"):
        ParallelAdapter(nn.Conv2d(4, 4, 1))


def test_weight_change_is_zero_where_nothing_moved_and_seen_where_it_did(source, batch,
                                                                         one_step):
    from tlgates.methods.base import trainable_parameters
    from tlgates.plotting import peft as plots

    tuned = build_method("finetune", source, 3)
    assert plots.weight_change(tuned.merged_backbone(), source).eq(0).all()
    lora = _perturbed("lora", source, layers="late")
    change = plots.weight_change(lora.merged_backbone(), source)
    assert change[["stem", "block 1", "block 2"]].eq(0).all()
    assert (change[["block 3", "block 4"]] > 0).all()
    frame = pd.DataFrame({"method": ["lora", "lora", "bnfit"], "accuracy": [0.8, 0.82, 0.7],
                          "trainable": [trainable_parameters(lora)] * 2 + [500]})
    figures = [plots.plot_weight_change(change.to_frame("lora")),
               plots.plot_accuracy_vs_parameters(frame)]
    assert all(isinstance(f, Figure) for f in figures)
