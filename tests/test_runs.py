"""The run cache (tlgates.runs): a run read back is the run trained, and nothing else is read."""
from __future__ import annotations

import pytest
import torch

from tlgates import runs
from tlgates.backbones import tiny_resnet
from tlgates.experiment import compare, run_method
from tlgates.methods import METHODS
from tlgates.source import SourceConfig, SourceModel
from tlgates.train import Execution, TrainConfig, evaluate

SHORT = TrainConfig(epochs=2)


@pytest.fixture(autouse=True)
def _train_every_run(monkeypatch, tmp_path):
    """Overrides conftest's fixture: the cache is on here, in a folder of this test's own."""
    monkeypatch.setenv("TLGATES_DATA", str(tmp_path))
    monkeypatch.delenv("TLGATES_RUN_CACHE", raising=False)


@pytest.fixture
def glyph_source():
    torch.manual_seed(0)
    return SourceModel(tiny_resnet(width=8).eval(), SourceConfig(), 0.0, 0.0)


def _run(source, method="finetune", **kwargs):
    settings = dict(seeds=[0, 1], config=SHORT, source=source, progress=False, threads=1)
    return run_method(method, **{**settings, **kwargs})


@pytest.mark.parametrize("method", ["finetune", "spottune", "delta"])
def test_a_cached_run_is_the_run_trained(glyph_source, method):
    trained = _run(glyph_source, method)
    assert trained.cached == []
    again = _run(glyph_source, method)
    assert again.cached == [0, 1]
    assert again.accuracies == trained.accuracies
    assert [h.rows for h in again.histories] == [h.rows for h in trained.histories]
    assert again.seconds == pytest.approx(trained.seconds)  # the training's, not the reading's
    torch.testing.assert_close(evaluate(again.model, again.task.test).logits,
                               evaluate(trained.model, trained.task.test).logits,
                               rtol=0, atol=0)
    assert "2 of 2 from the run cache" in again.summary()
    assert "from the run cache" not in trained.summary()


def test_only_missing_seeds_are_trained(glyph_source):
    first = _run(glyph_source, seeds=[0])
    both = _run(glyph_source, seeds=[0, 1], keep_model=False)
    assert both.cached == [0] and both.accuracies[0] == first.accuracies[0]


@pytest.mark.parametrize("change", [
    {"params": {"lr_scale": 0.5}}, {"config": TrainConfig(epochs=3)}, {"seeds": [2]},
    {"threads": 2}, {"preset": "paper"}, {"shots": 2}, {"target": "digits-photo"},
])
def test_another_setting_is_not_read_from_the_cache(glyph_source, change):
    method = "spottune" if "params" in change else "l2sp"
    _run(glyph_source, method, seeds=[2] if "seeds" not in change else [0])
    other = _run(glyph_source, method, **{"seeds": [2], **change})
    assert other.cached == []


@pytest.mark.parametrize("method", sorted(METHODS))
def test_validation_curves_do_not_change_the_training(glyph_source, method):
    """What lets a run trained with curves serve a request without them (run_key)."""
    runs_of = [_run(glyph_source, method, seeds=[0], curves=curves, cache=False, threads=1)
               for curves in (True, False)]
    assert runs_of[0].accuracies == runs_of[1].accuracies
    assert runs_of[0].histories[0].rows[-1]["loss"] == runs_of[1].histories[0].rows[-1]["loss"]


def test_a_run_with_curves_serves_a_request_without_and_not_the_reverse(glyph_source):
    _run(glyph_source, seeds=[0], curves=False)
    with_curves = _run(glyph_source, seeds=[0], val_every=2)
    assert with_curves.cached == [] and "val_acc" in with_curves.histories[0].rows[-1]
    assert [r["epoch"] for r in with_curves.histories[0].rows if "val_acc" in r] == [2]
    assert _run(glyph_source, seeds=[0], curves=False).cached == [0]
    assert _run(glyph_source, seeds=[0], val_every=2).cached == [0]
    assert _run(glyph_source, seeds=[0], val_every=1).cached == []  # every epoch: not kept
    assert _run(glyph_source, seeds=[0], val_every=2).cached == [0]  # every epoch serves 2


def test_another_source_or_code_is_not_read_from_the_cache(glyph_source, monkeypatch):
    _run(glyph_source)
    changed = SourceModel(tiny_resnet(width=8).eval(), SourceConfig(), 0.0, 0.0)
    with torch.no_grad():
        changed.backbone.load_state_dict(glyph_source.backbone.state_dict())
        next(changed.backbone.parameters()).view(-1)[0] += 1e-6
    assert _run(changed).cached == []
    monkeypatch.setattr(runs, "code_version", lambda: "edited")
    assert _run(glyph_source).cached == []


def test_cache_false_trains_again_and_the_switch_turns_it_off(glyph_source, monkeypatch,
                                                             tmp_path):
    _run(glyph_source)
    assert _run(glyph_source, cache=False).cached == []
    assert _run(glyph_source).cached == [0, 1]
    monkeypatch.setenv("TLGATES_RUN_CACHE", "off")
    assert _run(glyph_source).cached == []
    monkeypatch.setenv("TLGATES_RUN_CACHE", "of")
    with pytest.raises(ValueError, match="TLGATES_RUN_CACHE must be 'on' or 'off'"):
        _run(glyph_source)


def test_a_corrupt_file_is_trained_again_with_a_warning(glyph_source):
    trained = _run(glyph_source, seeds=[0])
    (path,) = runs.folder().glob("finetune-*.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="finetune run .* is corrupt; training it again"):
        again = _run(glyph_source, seeds=[0])
    assert again.cached == [] and again.accuracies == trained.accuracies
    assert _run(glyph_source, seeds=[0]).cached == [0]  # and kept again


def test_a_file_whose_key_differs_is_not_used(glyph_source):
    _run(glyph_source, seeds=[0])
    (path,) = runs.folder().glob("finetune-*.pt")
    saved = torch.load(path, weights_only=True)
    saved["key"]["threads"] = 7  # another run's file under this run's name
    torch.save(saved, path)
    with pytest.warns(UserWarning, match="made with other settings"):
        assert _run(glyph_source, seeds=[0]).cached == []


def test_the_model_is_kept_only_where_it_is_asked_for(glyph_source):
    _run(glyph_source, keep_model=False)
    sizes = [p.stat().st_size for p in runs.folder().glob("*.pt")]
    assert len(sizes) == 2 and max(sizes) < 50_000  # accuracy and history only
    needs_model = _run(glyph_source)  # the last seed's model: trained again, then kept
    assert needs_model.cached == [0] and needs_model.model is not None
    assert _run(glyph_source).cached == [0, 1]
    frame = compare(["finetune"], shots=[5], seeds=[0, 1], config=SHORT, source=glyph_source,
                    progress=False)
    assert len(frame) == 2


def test_an_interrupted_run_is_not_kept(glyph_source):
    result = _run(glyph_source, seeds=[0], should_stop=lambda: True)
    assert result.histories[-1].interrupted and not list(runs.folder().glob("*.pt"))


def test_full_scale_runs_are_not_cached(glyph_source):
    _run(glyph_source, seeds=[0], backbone=glyph_source.backbone)
    assert not list(runs.folder().glob("*.pt"))


def test_the_key_names_everything_a_result_depends_on(glyph_source):
    key = runs.run_key(method="finetune", target="digits", shots=5, seed=0, preset="tlgates",
                       params={}, config=SHORT, execution=Execution(),
                       source=glyph_source.backbone, threads=1)
    assert set(key) == {"method", "target", "shots", "seed", "preset", "params", "config",
                        "execution", "source", "threads", "cpu", "torch", "code"}
