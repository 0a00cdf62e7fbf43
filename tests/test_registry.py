"""Every registered method, whatever it is: its hyperparameters are declared once (their
config), hold at both ends of every range and are rejected just outside; a method registered
here appears in the registry-wide tools without editing them."""
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from tlgates.backbones import tiny_resnet
from tlgates.experiment import deviation_frame
from tlgates.methods import (
    METHODS, PATHS, Classifier, MethodConfig, build_method, get_method, hyperparameter,
    register,
)
from tlgates.methods.ptu import RowLSTM
from tlgates.plotting.comparison import decision_summary
from tlgates.train import evaluate, path_accuracies


@pytest.fixture(scope="module")
def sources():
    """The largest structure a range must fit (ResNet-50's 16 blocks in 4 stages), small."""
    torch.manual_seed(0)
    return {"backbone": tiny_resnet(width=8, blocks_per_stage=(4, 4, 4, 4)).eval(),
            "row-lstm": RowLSTM(row_size=24, hidden=6).eval()}


def _edges(param: Any) -> list[tuple[Any, bool]]:
    """(value, allowed) at and just beyond each end of the range, or each choice and a wrong
    one."""
    if param.choices is not None:
        return [(c, True) for c in param.choices] + [("no-such-choice", False)]
    if isinstance(param.default, bool):
        return [(True, True), (False, True), ("maybe", False)]
    edges = []
    step = 1 if isinstance(param.default, int) else None
    for end, sign in ((param.low, -1), (param.high, 1)):
        if end is not None:
            outside = end + sign * (step or max(abs(end), 1.0) * 1e-3)
            edges += [(type(param.default)(end), True), (outside, False)]
    return edges


CASES = [(name, hp, value, ok) for name, spec in METHODS.items()
         for hp, param in spec.params.items() for value, ok in _edges(param)]


@pytest.mark.parametrize("name, hp, value, ok", CASES,
                         ids=[f"{n}-{h}={v}" for n, h, v, _ in CASES])
def test_every_hyperparameter_holds_at_its_ends_and_fails_beyond(sources, name, hp, value, ok):
    source = sources[get_method(name).source]
    if ok:
        build_method(name, source, 3, **{hp: value})
    else:
        with pytest.raises(ValueError, match=hp):
            build_method(name, source, 3, **{hp: value})


@dataclass(frozen=True)
class ShrinkConfig(MethodConfig):
    shrink: float = hyperparameter(0.5, "scale of the pooled features", low=0.0, high=1.0,
                                   paper=1.0, origin="reconstruction", why="a test method")


class Shrink(Classifier):
    """A toy gated method: the head reads ``shrink·f`` and records it as a decision."""

    def __init__(self, source, num_classes, **hyperparameters):
        super().__init__(source, num_classes)
        self.shrink, self.forced = ShrinkConfig(**hyperparameters).shrink, None

    def forward(self, x):
        scale = {None: self.shrink, "pretrained": 0.0, "finetuned": 1.0}[self.forced]
        f = self.backbone(x)
        self.last_decisions = {"scale": torch.full((len(x), 1), scale)}
        return self.head(scale * f)

    def decision_summary(self, decisions):
        s = decisions["scale"]
        return {"decides": "a scale", "choices per image": 1, "pre-trained share": 0.0,
                "reading": f"scale {s.mean():.2f}", "varies between images": 0.0}

    def _force(self, path):
        before, self.forced = self.forced, path
        return before


@pytest.fixture
def shrink_method():
    register("shrink", "a toy method registered by a test", ShrinkConfig,
             paper="arXiv 0000.00000")(lambda source, k, **hp: Shrink(source, k, **hp))
    yield "shrink"
    del METHODS["shrink"]


def test_a_new_method_appears_in_every_registry_wide_tool(shrink_method, source, batch):
    spec = get_method(shrink_method)
    assert spec.defaults() == {"shrink": 0.5} and spec.defaults("paper") == {"shrink": 1.0}
    assert list(deviation_frame(shrink_method)["switch"]) == ["shrink"]
    with pytest.raises(ValueError, match=r"shrink must be in \[0, 1\]"):
        build_method(shrink_method, source, 3, shrink=2.0)
    model = build_method(shrink_method, source, 3)
    data = TensorDataset(*batch)
    table = decision_summary({shrink_method: evaluate(model, data)})
    assert table.loc[shrink_method, "reading"] == "scale 0.50"
    assert list(path_accuracies(model, data).index) == ["learned", "all pre-trained",
                                                        "all fine-tuned"]


@pytest.mark.parametrize("name", ["spottune", "adafilter", "ptu", "ptu-rnn"])
def test_every_gated_method_can_be_forced_to_each_path(sources, name):
    spec = get_method(name)
    model = build_method(name, sources[spec.source], 3).eval()
    x = torch.rand(2, 3, 8, 8) if spec.source == "row-lstm" else torch.rand(2, 3, 32, 32)
    learned = model(x)
    for path in PATHS:
        with model.forcing(path):
            forced = model(x)
        torch.testing.assert_close(model(x), learned)  # the forcing ends with the block
        assert forced.shape == learned.shape
    with pytest.raises(ValueError, match="path must be one of pretrained, finetuned"):
        with model.forcing("frozen"):
            pass


def test_methods_without_a_choice_refuse_to_be_forced(source):
    with pytest.raises(TypeError, match="no choice between pre-trained and fine-tuned"):
        with build_method("finetune", source, 3).forcing("pretrained"):
            pass
