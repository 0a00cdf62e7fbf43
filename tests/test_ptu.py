import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import TensorDataset

from tlgates.backbones import Backbone, tiny_resnet, torchvision_resnet
from tlgates.methods import build_method, get_method
from tlgates.methods.ptu import (
    ConvPTU, PTUGate, PTULSTM, PTUNetwork, RecurrentClassifier, RecurrentPTU, RowLSTM,
    forced_gates, lstm_cell,
)
from tlgates.source import RNNSourceConfig, rnn_source_model
from tlgates.train import TrainConfig, fit


@pytest.fixture
def source():
    torch.manual_seed(0)
    return tiny_resnet(width=8).eval()


@pytest.fixture
def rnn_source():
    torch.manual_seed(0)
    return RowLSTM(row_size=3 * 8, hidden=6).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)


@pytest.fixture
def small_images():
    """8×8 images for the row LSTM (8 rows of 3·8 = 24 values)."""
    g = torch.Generator().manual_seed(2)
    return torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)


def train_steps(model, x, y, steps=3, lr=0.1):
    model.train()
    opt = torch.optim.SGD(model.param_groups(lr), lr=lr, momentum=0.9)
    for _ in range(steps):
        loss = sum(model.loss_terms(x, y).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def target_network(model: PTUNetwork) -> Backbone:
    """The target copies of a PTU network, wired as a plain backbone."""
    units = list(model.units)
    return Backbone(units[0].target, [u.target for u in units[1:]],
                    model.layer_channels[1:], [])


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(module, before):
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


# ----------------------------------------------------------------------------- CNN form


def test_shapes_and_gates_strictly_between_zero_and_one(source, batch):
    model = build_method("ptu", source, 3, z_init=0.3)
    assert model.layer_names == ["stem", "block 1", "block 2", "block 3", "block 4"]
    assert model.layer_channels == [8, 8, 16, 32, 64]
    train_steps(model, *batch)
    logits = model(batch[0])
    z, r = model.last_decisions["z"], model.last_decisions["r"]
    assert logits.shape == (8, 3) and z.shape == r.shape == (8, 128)
    assert ((z > 0) & (z < 1) & (r > 0) & (r < 1)).all()
    assert not torch.allclose(z, torch.full_like(z, 0.3))  # the gates learned something
    # the sigmoid never reaches 0 or 1, even on extreme activations (float64)
    gate = PTUGate(5, z_init=0.9).double()
    nn.init.normal_(gate.proj.weight, std=2.0)  # logits up to about ±20
    z, r = gate(torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 5, dtype=torch.float64))
    assert ((z > 0) & (z < 1) & (r > 0) & (r < 1)).all()


@pytest.mark.parametrize("z_init", [0.05, 0.5, 0.9])
def test_gates_start_on_the_antidiagonal_and_the_network_starts_as_the_source(
        source, batch, z_init):
    model = build_method("ptu", source, 3, z_init=z_init).eval()
    logits = model(batch[0])
    z, r = model.last_decisions["z"], model.last_decisions["r"]
    torch.testing.assert_close(z, torch.full_like(z, z_init))
    torch.testing.assert_close(z + r, torch.ones_like(z))
    torch.testing.assert_close(logits, model.head(source(batch[0])))


def test_unit_output_is_z_times_source_plus_r_times_target(source, batch):
    unit = ConvPTU(source.blocks[1], 16, z_init=0.4)
    nn.init.normal_(unit.gate.proj.weight, std=0.5)
    with torch.no_grad():
        for p in unit.target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    unit.eval()
    h = torch.rand(8, 8, 32, 32)
    out, z, r = unit(h)
    a_s, a_t = source.blocks[1](h), unit.target(h)
    u = unit.gate.proj
    gates = torch.sigmoid(torch.cat([a_s.mean((2, 3)), a_t.mean((2, 3))], 1) @ u.weight.T
                          + u.bias)
    torch.testing.assert_close(z, gates[:, :16])
    torch.testing.assert_close(r, gates[:, 16:])
    torch.testing.assert_close(out, z[:, :, None, None] * a_s + r[:, :, None, None] * a_t)


def test_forced_share_equals_the_source_network(source, batch):
    model = build_method("ptu", source, 3)
    train_steps(model, *batch)  # the target copies now differ from the source
    with forced_gates(model, 1.0, 0.0):
        torch.testing.assert_close(model(batch[0]), model.head(source(batch[0])))
        assert (model.last_decisions["z"] == 1).all() and (model.last_decisions["r"] == 0).all()
    assert not torch.allclose(target_network(model)(batch[0]), source(batch[0]), atol=1e-3)
    assert not torch.allclose(model(batch[0]), model.head(source(batch[0])))  # restored


def test_forced_finetune_equals_the_target_copy(source, batch):
    model = build_method("ptu", source, 3)
    train_steps(model, *batch)
    with forced_gates(model, 0.0, 1.0):
        torch.testing.assert_close(model(batch[0]), model.head(target_network(model)(batch[0])))


def test_forced_gates_in_training_mode_use_the_target_batch_statistics(source, batch):
    """(0, 1) in training mode equals the target copy trained as an ordinary network."""
    model = build_method("ptu", source, 3)
    model.train()
    plain = target_network(model)
    with forced_gates(model, 0.0, 1.0):
        torch.testing.assert_close(model(batch[0]), model.head(plain(batch[0])))


def test_source_layers_never_change_and_get_no_gradients(source, batch):
    before_source = state(source)
    data = TensorDataset(*batch)
    model = build_method("ptu", source, 3)
    frozen_before = [state(u.source) for u in model.units]
    target_before = [state(u.target) for u in model.units]
    gate_before = [state(u.gate) for u in model.units]
    fit(model, data, data, TrainConfig(epochs=2, batch_size=4), device="cpu", progress=False)
    for unit, frozen, target, gate in zip(model.units, frozen_before, target_before,
                                          gate_before):
        assert_same_state(unit.source, frozen)  # weights and BatchNorm statistics
        assert all(not p.requires_grad and p.grad is None for p in unit.source.parameters())
        assert any(not torch.equal(v, target[k]) for k, v in unit.target.state_dict().items())
        assert not torch.equal(unit.gate.proj.bias, gate["proj.bias"])
    assert_same_state(source, before_source)
    assert all(p.requires_grad for p in source.parameters())  # flags untouched too


def test_batchnorm_batch_mode_updates_statistics_but_not_weights(source, batch):
    model = build_method("ptu", source, 3, batchnorm="batch")
    frozen = model.units[0].source
    before = state(frozen)
    train_steps(model, *batch, steps=1)
    after = frozen.state_dict()
    assert torch.equal(after["module.0.weight"], before["module.0.weight"])
    assert not torch.equal(after["module.1.running_mean"], before["module.1.running_mean"])
    model.train()
    assert frozen.training
    eval_model = build_method("ptu", source, 3)
    eval_model.train()
    assert not eval_model.units[0].source.training


def test_param_groups_cover_every_trainable_parameter_once(source):
    model = build_method("ptu", source, 3, gate_lr_scale=10.0, target_lr_scale=0.5)
    groups = model.param_groups(0.02)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02, 0.2, 0.02])
    biases = {id(u.gate.proj.bias) for u in model.units}
    assert {id(p) for p in groups[2]["params"]} == biases  # only the biases get the scale
    frozen = {id(p) for u in model.units for p in u.source.parameters()}
    assert not frozen & trainable


def test_epoch_record_has_one_value_per_channel(source, batch):
    model = build_method("ptu", source, 3).eval()
    model(batch[0])
    record = model.epoch_record(model.last_decisions, batch[1])
    assert record["z_mean"] == pytest.approx(0.5) and record["r_mean"] == pytest.approx(0.5)
    assert len(record["z_channel"]) == len(record["r_channel"]) == sum(model.layer_channels)


def test_fit_records_the_gates_every_epoch(source, batch):
    data = TensorDataset(*batch)
    model = build_method("ptu", source, 3, gate_lr_scale=10.0)
    frame = fit(model, data, data, TrainConfig(epochs=3, batch_size=4), device="cpu",
                progress=False).frame()
    assert len(frame) == 3
    assert {"z_mean", "r_mean", "z_channel", "r_channel"} <= set(frame.columns)
    assert frame["z_channel"].iloc[0] != frame["z_channel"].iloc[-1]


def test_torchvision_resnet18_shapes():
    source = torchvision_resnet("resnet18").eval()
    model = build_method("ptu", source, 5).train()
    assert model.layer_channels == [64, 64, 64, 128, 128, 256, 256, 512, 512]
    x, y = torch.rand(2, 3, 64, 64), torch.tensor([0, 4])
    sum(model.loss_terms(x, y).values()).backward()
    assert model.units[3].target.conv1.weight.grad is not None
    assert model.units[3].source.module.conv1.weight.grad is None
    assert model.units[3].gate.proj.weight.grad is not None
    model.eval()
    assert model(x).shape == (2, 5)
    assert model.last_decisions["z"].shape == (2, sum(model.layer_channels))


# ----------------------------------------------------------------------------- recurrent form


def test_rows_reads_the_image_row_by_row():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    seq = RowLSTM.rows(x)
    assert seq.shape == (2, 4, 15)
    torch.testing.assert_close(seq[1, 2], torch.cat([x[1, c, 2] for c in range(3)]))


def test_lstm_cell_has_the_weights_of_the_lstm(rnn_source):
    cell = lstm_cell(rnn_source.lstm)
    x = torch.rand(4, 5, 24)
    h = c = torch.zeros(4, 6)
    for t in range(5):
        h, c = cell(x[:, t], (h, c))
    torch.testing.assert_close(h, rnn_source.lstm(x)[1][0][0])
    with pytest.raises(ValueError, match="one-layer"):
        lstm_cell(nn.LSTM(3, 4, num_layers=2))


def _trained_unit(rnn_source, small_images):
    model = build_method("ptu-rnn", rnn_source, 3, gate_lr_scale=10.0)
    train_steps(model, *small_images)
    return model.unit


def _padded(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(4, 7, 24, generator=g), torch.tensor([7, 3, 1, 5])


def _last_state_of(lstm: nn.LSTM, x, lengths):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return lstm(packed)[1][0][0]


def _as_lstm(cell: nn.LSTMCell) -> nn.LSTM:
    lstm = nn.LSTM(cell.input_size, cell.hidden_size, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(lstm, f"{name}_l0").copy_(getattr(cell, name))
    return lstm


def test_recurrent_unit_on_variable_length_input_matches_each_sequence_alone(
        rnn_source, small_images):
    unit = _trained_unit(rnn_source, small_images)
    x, lengths = _padded()
    h, z, r = unit(x, lengths)
    assert h.shape == (4, 6) and z.shape == r.shape == (4, 7, 6)
    for i, n in enumerate(lengths.tolist()):
        h_alone, z_alone, r_alone = unit(x[i:i + 1, :n])
        torch.testing.assert_close(h[i:i + 1], h_alone)
        torch.testing.assert_close(z[i:i + 1, :n], z_alone)
        torch.testing.assert_close(r[i:i + 1, :n], r_alone)
        assert z[i, n:].isnan().all() and r[i, n:].isnan().all()  # no gate past the end
        valid = torch.cat([z_alone, r_alone]).flatten()
        assert ((valid > 0) & (valid < 1)).all()
    # padding values do not matter
    noisy = x.clone()
    for i, n in enumerate(lengths.tolist()):
        noisy[i, n:] = 100.0
    torch.testing.assert_close(unit(noisy, lengths)[0], h)


def test_recurrent_unit_follows_its_equations(rnn_source, small_images):
    """h = z·h_s + r·h_t and c = (z·c_s + r·c_t) / (z + r), with z, r from [h_s; h_t]."""
    unit = _trained_unit(rnn_source, small_images)
    nn.init.normal_(unit.gate.proj.weight, std=0.5)  # z + r far from 1
    x, _ = _padded()
    h_out, z_out, r_out = unit(x)
    cell_s, cell_t, u = rnn_source.lstm, unit.target, unit.gate.proj
    h = c = torch.zeros(4, 6)
    for step in range(7):
        h_s, c_s = lstm_cell(cell_s)(x[:, step], (h, c))
        h_t, c_t = cell_t(x[:, step], (h, c))
        gates = torch.sigmoid(torch.cat([h_s, h_t], 1) @ u.weight.T + u.bias)
        z, r = gates[:, :6], gates[:, 6:]
        torch.testing.assert_close(z_out[:, step], z)
        torch.testing.assert_close(r_out[:, step], r)
        h, c = z * h_s + r * h_t, (z * c_s + r * c_t) / (z + r)
    torch.testing.assert_close(h_out, h)
    assert ((z_out + r_out - 1).abs() > 0.05).any()


def test_recurrent_forced_share_equals_the_source_lstm(rnn_source, small_images):
    unit = _trained_unit(rnn_source, small_images)
    x, lengths = _padded()
    assert not torch.allclose(unit(x, lengths)[0], _last_state_of(rnn_source.lstm, x, lengths))
    with forced_gates(unit, 1.0, 0.0):
        torch.testing.assert_close(unit(x, lengths)[0],
                                   _last_state_of(rnn_source.lstm, x, lengths))


def test_recurrent_forced_finetune_equals_the_target_lstm(rnn_source, small_images):
    unit = _trained_unit(rnn_source, small_images)
    target = _as_lstm(unit.target)
    x, lengths = _padded()
    assert not torch.allclose(_last_state_of(target, x, lengths),
                              _last_state_of(rnn_source.lstm, x, lengths), atol=1e-3)
    with forced_gates(unit, 0.0, 1.0):
        torch.testing.assert_close(unit(x, lengths)[0], _last_state_of(target, x, lengths))


def test_recurrent_ptu_starts_as_the_source_and_its_corners_are_the_baselines(
        rnn_source, small_images):
    x, _ = small_images
    torch.manual_seed(0)
    model = build_method("ptu-rnn", rnn_source, 3, z_init=0.8).eval()
    share = build_method("ptu-rnn", rnn_source, 3, transfer="share").eval()
    finetune = build_method("ptu-rnn", rnn_source, 3, transfer="finetune").eval()
    assert isinstance(model, RecurrentPTU)
    assert isinstance(share, RecurrentClassifier) and isinstance(finetune, RecurrentClassifier)
    assert not any(p.requires_grad for p in share.encoder.parameters())
    assert all(p.requires_grad for p in finetune.encoder.parameters())
    share.head.load_state_dict(model.head.state_dict())
    torch.testing.assert_close(model(x), share(x))  # z + r = 1 and target = source at start
    z = model.last_decisions["z"]
    assert z.shape == (6, 8, 6)
    torch.testing.assert_close(z, torch.full_like(z, 0.8))


def test_recurrent_source_cell_never_changes(rnn_source, small_images):
    before = state(rnn_source)
    data = TensorDataset(*small_images)
    model = build_method("ptu-rnn", rnn_source, 3, gate_lr_scale=10.0)
    cell_before, target_before = state(model.unit.source), state(model.unit.target)
    history = fit(model, data, data, TrainConfig(epochs=2, batch_size=3, augment=False),
                  device="cpu", progress=False)
    assert_same_state(model.unit.source, cell_before)
    assert any(not torch.equal(v, target_before[k])
               for k, v in model.unit.target.state_dict().items())
    assert_same_state(rnn_source, before)
    row = history.rows[-1]
    assert len(row["z_time"]) == 8 and len(row["z_channel"]) == 6
    assert 0 < row["z_mean"] < 1 and 0 < row["r_mean"] < 1


def test_recurrent_param_groups(rnn_source):
    model = build_method("ptu-rnn", rnn_source, 3, gate_lr_scale=5.0, target_lr_scale=0.1)
    groups = model.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids))
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.1, 0.5, 0.1])
    assert groups[2]["params"] == [model.unit.gate.proj.bias]


def test_ptu_rnn_builder_takes_only_a_row_lstm_and_trains_nothing(source):
    with pytest.raises(TypeError, match="ptu-rnn needs a RowLSTM source"):
        build_method("ptu-rnn", source, 4)


def _fake_glyphs(size):
    g = torch.Generator().manual_seed(0)

    def glyphs(n, seed=0):
        return TensorDataset(torch.rand(4 * n, 3, size, size, generator=g),
                             torch.arange(4 * n) % 4)

    return glyphs


def test_ptu_rnn_runs_the_same_from_a_cold_and_a_warm_source_cache(tmp_path, monkeypatch):
    import tlgates.source
    from tlgates.experiment import run_method

    monkeypatch.setenv("TLGATES_DATA", str(tmp_path))
    monkeypatch.setattr(tlgates.source, "glyph_dataset", _fake_glyphs(32))
    cnn = tlgates.source.SourceModel(tiny_resnet(width=8).eval(), None, 0.0, 0.0)
    runs = [run_method("ptu-rnn", shots=1, seeds=[0], config=TrainConfig(epochs=1),
                       source=cnn, progress=False, curves=False) for _ in range(2)]
    assert len(list(tmp_path.glob("rnn-source-*.pt"))) == 1  # trained once, then loaded
    cold, warm = (run.model.state_dict() for run in runs)
    for name in cold:
        assert torch.equal(cold[name], warm[name]), name


def test_rnn_source_model_is_cached_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    import tlgates.source

    monkeypatch.setenv("TLGATES_DATA", str(tmp_path))
    monkeypatch.setattr(tlgates.source, "glyph_dataset", _fake_glyphs(8))
    config = RNNSourceConfig(hidden=5, glyphs_per_class=2, epochs=1, batch_size=4)
    first = rnn_source_model(config, progress=False)
    assert not first.from_cache and first.encoder.row_size == 24
    second = rnn_source_model(config, progress=False)
    assert second.from_cache
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(second.encoder(x), first.encoder(x))
    (path,) = tmp_path.glob("rnn-source-*.pt")
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="is corrupt; training it again") as warned:
        third = rnn_source_model(config, progress=False)
    assert not third.from_cache
    message = str(warned[0].message)  # one line of ours, not torch's unpickling advice
    assert "\n" not in message and "weights_only" not in message


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method, name, value, message", [
    ("ptu", "z_init", 0.0, "z_init"),
    ("ptu", "z_init", 1.0, "z_init"),
    ("ptu", "gate_lr_scale", 0.0, "gate_lr_scale"),
    ("ptu", "target_lr_scale", -0.5, "target_lr_scale"),
    ("ptu", "batchnorm", "train", "batchnorm must be one of eval, batch"),
    ("ptu", "transfer", "share", "unknown hyperparameter 'transfer'"),
    ("ptu-rnn", "transfer", "both", "transfer must be one of ptu, finetune, share"),
    ("ptu-rnn", "z_init", "half", "z_init must be a float"),
])
def test_bad_hyperparameters_raise_clear_errors(source, rnn_source, method, name, value,
                                                message):
    src = rnn_source if method == "ptu-rnn" else source
    with pytest.raises(ValueError, match=message):
        build_method(method, src, 3, **{name: value})


def test_direct_construction_errors(source, rnn_source):
    with pytest.raises(ValueError, match=r"z_init must be in \(0, 1\)"):
        PTUGate(4, z_init=1.0)
    with pytest.raises(ValueError, match="batchnorm"):
        PTUNetwork(source, 3, batchnorm="frozen")
    with pytest.raises(ValueError, match="gate_lr_scale"):
        RecurrentPTU(rnn_source, 3, gate_lr_scale=-1.0)
    with pytest.raises(ValueError, match="output channels"):
        PTUNetwork(Backbone(nn.ReLU(), [nn.Conv2d(3, 4, 1)], [4], [0]), 3)
    with pytest.raises(ValueError, match="no PTU gates"):
        with forced_gates(source, 1.0, 0.0):
            pass
    with pytest.raises(ValueError, match="forced gates must lie in"):
        with forced_gates(PTUNetwork(source, 3), 1.5, 0.0):
            pass
    unit = PTULSTM(rnn_source.lstm)
    with pytest.raises(ValueError, match=r"lengths must hold 2 values in \[1, 5\]"):
        unit(torch.rand(2, 5, 24), torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="lengths"):
        unit(torch.rand(2, 5, 24), torch.tensor([0, 2]))


def test_command_line_strings_parse():
    values = get_method("ptu").check({"z_init": "0.9", "batchnorm": "batch"})
    assert values["z_init"] == 0.9 and values["batchnorm"] == "batch"
    assert get_method("ptu-rnn").check({"transfer": "share"})["transfer"] == "share"
    assert math.isclose(get_method("ptu").defaults()["z_init"], 0.5)


# ----------------------------------------------------------------------------- plots


def test_plots_draw_the_gates_of_both_forms(source, rnn_source, batch, small_images):
    import pandas as pd
    from matplotlib.figure import Figure

    from tlgates.plotting import ptu as plots

    data = TensorDataset(*batch)
    model = build_method("ptu", source, 3)
    frame = fit(model, data, data, TrainConfig(epochs=2, batch_size=4), device="cpu",
                progress=False).frame()
    model(batch[0])
    z, r = model.last_decisions["z"], model.last_decisions["r"]
    names, channels = model.layer_names, model.layer_channels
    zc, rc = plots.channel_means(z), plots.channel_means(r)
    table = plots.layer_table(zc, rc, names, channels)
    assert list(table.index) == names
    near = table[[c for c in table.columns if c.startswith("near")]].sum(axis=1)
    assert near.to_numpy() == pytest.approx(1.0)
    rnn = build_method("ptu-rnn", rnn_source, 3).eval()
    rnn(small_images[0])
    rz, rr = rnn.last_decisions["z"], rnn.last_decisions["r"]
    results = pd.DataFrame({"network": ["CNN", "CNN", "RNN", "RNN"], "seed": [0, 1, 0, 1],
                            "strategy": ["PTU", "PTU", "sharing", "sharing"],
                            "accuracy": [0.8, 0.7, 0.6, 0.65]})
    figures = [
        plots.plot_ptu_idea(),
        plots.plot_gate_plane(zc, rc, names, channels, z_init=0.5),
        plots.plot_gate_plane_epoch(frame, 2, names, channels, z_init=0.5),
        plots.plot_layer_gates(zc, rc, names, channels),
        plots.plot_layer_gates_over_epochs(frame, names, channels),
        plots.plot_class_gates(z, r, batch[1], names, channels),
        plots.plot_class_gates(rz, rr, small_images[1], rnn.layer_names, rnn.layer_channels),
        plots.plot_gates_over_time(rz, rr),
        plots.plot_rnn_example(small_images[0][0], rz[0], rr[0], label="3"),
        plots.plot_transfer_results(results),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert all(ax.get_title() or not ax.axison for ax in fig.axes if ax.get_label() !=
                   "<colorbar>")
    with pytest.raises(ValueError, match="expected 128 channels"):
        plots.split_layers(zc[:-1], channels)
    with pytest.raises(ValueError, match=r"epoch must be in \[1, 2\]"):
        plots.plot_gate_plane_epoch(frame, 3, names, channels)
