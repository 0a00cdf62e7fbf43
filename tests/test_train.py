import pytest
import torch
from torch.utils.data import TensorDataset

from tlgates.backbones import tiny_resnet
from tlgates.methods import build_method
from tlgates.methods.base import TransferModel
from tlgates.train import TrainConfig, evaluate, fit, random_shift


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(24) % 3
    return TensorDataset(torch.rand(24, 3, 32, 32, generator=g), y)


@pytest.fixture
def source():
    torch.manual_seed(0)
    return tiny_resnet(width=8).eval()


def train(source, data, seed=0, **config):
    torch.manual_seed(seed)
    model = build_method("finetune", source, 3)
    history = fit(model, data, data, TrainConfig(**{"epochs": 2, **config}), seed=seed,
                  device="cpu", progress=False)
    return model, history


def test_history_has_one_row_per_epoch_with_loss_terms(source, data):
    _, history = train(source, data, epochs=3)
    frame = history.frame()
    assert list(frame["epoch"]) == [1, 2, 3]
    assert {"loss", "ce", "lr", "val_acc", "seconds"} <= set(frame.columns)
    assert not history.interrupted


def test_same_seed_same_result_and_other_seed_differs(source, data):
    m1, h1 = train(source, data, seed=3)
    m2, h2 = train(source, data, seed=3)
    m3, _ = train(source, data, seed=4)
    torch.testing.assert_close(m1.head.weight, m2.head.weight, rtol=0, atol=0)
    assert h1.frame()["loss"].tolist() == h2.frame()["loss"].tolist()
    assert not torch.equal(m1.head.weight, m3.head.weight)


class Exploding(TransferModel):
    def __init__(self, source):
        super().__init__()
        self.net = build_method("finetune", source, 3)

    def forward(self, x):
        return self.net(x)

    def loss_terms(self, x, y):
        terms = self.net.loss_terms(x, y)
        terms["boom"] = torch.tensor(float("nan"))
        return terms


def test_nan_loss_stops_with_a_clear_error_and_keeps_weights(source, data):
    model = Exploding(source)
    before = model.net.head.weight.clone()
    with pytest.raises(FloatingPointError, match=r"epoch 0, step 0.*boom=nan.*learning rate"):
        fit(model, data, config=TrainConfig(epochs=1), device="cpu", progress=False)
    torch.testing.assert_close(model.net.head.weight, before)


def test_stop_request_leaves_model_and_history_consistent(source, data):
    model = build_method("finetune", source, 3)
    calls = iter(range(100))
    steps_per_epoch = 2  # 24 examples, batch 16
    with pytest.warns(UserWarning, match="stopped after 1 complete epoch"):
        history = fit(model, data, data, TrainConfig(epochs=5), device="cpu", progress=False,
                      should_stop=lambda: next(calls) == steps_per_epoch + 1)
    assert history.interrupted and len(history) == 1
    assert not model.training
    assert evaluate(model, data).logits.shape == (24, 3)


def test_keyboard_interrupt_is_caught(source, data):
    model = build_method("finetune", source, 3)

    def interrupt(history):
        raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="stopped after 1 complete epoch"):
        history = fit(model, data, config=TrainConfig(epochs=3), device="cpu",
                      progress=False, on_epoch=interrupt)
    assert history.interrupted and len(history) == 1


def test_random_shift_moves_pixels_by_whole_steps():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.all(shifted.sum(dim=(1, 2, 3)) == 1.0)  # nothing lost, nothing blurred
    rows, cols = shifted[:, 0].nonzero()[:, 1], shifted[:, 0].nonzero()[:, 2]
    assert rows.min() == 2 and rows.max() == 6 and cols.min() == 2 and cols.max() == 6


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs must be an integer ≥ 1"),
    ({"lr": -0.1}, r"lr must be a number in \(0, 10\]"),
    ({"schedule": "step"}, "schedule must be one of onecycle, cosine, constant"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_config_raises_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(("size", "batch_size"), [(10, 16), (20, 16), (50, 16), (100, 16),
                                                  (64, 16), (9920, 64)])
def test_even_batches_cover_each_example_once_in_batches_of_near_equal_size(
        size: int, batch_size: int) -> None:
    from tlgates.train import EvenBatches

    sampler = EvenBatches(size, batch_size, torch.Generator().manual_seed(0))
    epochs = [list(sampler) for _ in range(2)]
    for batches in epochs:
        sizes = [len(batch) for batch in batches]
        assert len(batches) == len(sampler) == -(-size // batch_size)  # as many steps as before
        assert max(sizes) - min(sizes) <= 1 and max(sizes) <= batch_size
        assert sorted(i for batch in batches for i in batch) == list(range(size))
    if size > 1:
        assert epochs[0] != epochs[1]  # reshuffled every epoch
    # 50 images in batches of 16: 13, 13, 12, 12, never a remainder batch of 2
    if (size, batch_size) == (50, 16):
        assert [len(b) for b in epochs[0]] == [13, 13, 12, 12]
