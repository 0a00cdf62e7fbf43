"""The researcher's path: streamed images at their own size, torchvision ResNets, mixed
precision, the device-side NaN guard, and DistributedDataParallel under torchrun (gloo, CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from scale_data import ddp_config, ddp_sources, ddp_task
from torch import nn
from torchvision.models import resnet

from tlgates import distributed
from tlgates.__main__ import main
from tlgates.backbones import IMAGENET_NORMALIZATION, torchvision_resnet
from tlgates.data import ImageSubset, load_target, unaugmented, write_texture_folder

from tlgates.methods import build_method
from tlgates.methods.base import Frozen
from tlgates.train import Execution, TrainConfig, evaluate, fit, training_step

TESTS = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_texture_folder(tmp_path_factory.mktemp("images"))


def test_a_streamed_folder_keeps_the_splits_and_draws_of_the_in_memory_one(folder):
    small = load_target(f"folder:{folder}", shots=3, seed=1)
    big = load_target(f"folder:{folder}", shots=3, seed=1, size=64,
                      normalization=IMAGENET_NORMALIZATION)
    for name in ("train", "val", "test"):
        kept, streamed = getattr(small, name), getattr(big, name)
        assert isinstance(streamed, ImageSubset) and len(streamed) == len(kept)
        assert torch.equal(streamed.labels, kept.tensors[1])
    assert big.train.augments and not big.test.augments
    x, _ = big.test[0]
    assert x.shape == (3, 64, 64) and x.min() < 0  # normalised as ImageNet weights expect
    assert torch.equal(big.test[0][0], big.test[0][0])  # evaluation: resize + centre crop
    torch.manual_seed(0)
    first = big.train[0][0]
    torch.manual_seed(1)
    assert not torch.equal(first, big.train[0][0])  # training: random crops and flips
    plain = unaugmented(big.train)
    assert not plain.augments and torch.equal(plain[0][0], plain[0][0])
    assert plain[0][0].shape == (3, 64, 64)


def test_size_is_checked_and_only_for_images_on_disk(folder):
    with pytest.raises(ValueError, match="size must be an int in 16..1024, got 0"):
        load_target(f"folder:{folder}", size=0)
    with pytest.raises(ValueError, match="size applies to .* bundled target 'digits'"):
        load_target("digits", size=64)


def test_weights_from_a_file_load_into_the_backbone_and_wrong_ones_are_named(tmp_path):
    torch.manual_seed(0)
    net = resnet.resnet18(num_classes=7)
    good = tmp_path / "r18.pth"
    torch.save(net.state_dict(), good)
    backbone = torchvision_resnet("resnet18", good)
    assert torch.equal(backbone.blocks[0].conv1.weight, net.layer1[0].conv1.weight)
    assert torch.equal(backbone.stem[1].running_var, net.bn1.running_var)
    assert backbone.normalization == IMAGENET_NORMALIZATION
    with pytest.raises(ValueError, match=r"weights: .*r18.pth does not fit resnet34"):
        torchvision_resnet("resnet34", good)
    with pytest.raises(FileNotFoundError, match="weights: no such file"):
        torchvision_resnet("resnet18", tmp_path / "missing.pth")


@pytest.mark.parametrize("argv, flag", [
    (["--size", "0"], "--size"),
    (["--size", "64", "--target", "digits"], "--size"),
    (["--arch", "resnet7"], "--arch"),
    (["--workers", "-1"], "--workers"),
    (["--arch", "resnet18", "--weights", "missing.pth"], "--weights"),
    (["--weights", "IMAGENET1K_V1"], "--weights"),
    (["--arch", "resnet18", "--weights", "NOT_A_NAME"], "--weights"),
    (["--device", "gpu"], "--device"),
    (["--sync-bn"], "--sync-bn"),
])
def test_bad_full_scale_flags_exit_2_with_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "finetune", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tlgates: error:"), err
    assert flag in err, err


def test_torchvision_weights_that_cannot_be_downloaded_say_what_to_do(monkeypatch, capsys):
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "finetune", "--arch", "resnet18", "--weights", "IMAGENET1K_V1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "--weights IMAGENET1K_V1" in err and "$TORCH_HOME/hub/checkpoints" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine "
                                                      "without CUDA")
def test_a_missing_device_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["run", "finetune", "--device", "cuda"])
    assert "--device cuda: no CUDA device here" in capsys.readouterr().err


def test_run_at_224_pixels_on_an_image_folder_end_to_end(folder):
    completed = subprocess.run(
        [sys.executable, "-m", "tlgates", "run", "finetune", "--target", f"folder:{folder}",
         "--arch", "resnet18", "--size", "224", "--epochs", "1", "--seeds", "1", "--shots",
         "1", "--batch-size", "3", "--json", "--quiet"],
        capture_output=True, text=True, timeout=300, env=ENV)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["target"] == f"folder:{folder}" and len(result["accuracies"]) == 1
    assert 0 <= result["accuracies"][0] <= 1


def test_workers_give_the_same_training_as_each_other(folder):
    task = load_target(f"folder:{folder}", shots=2, seed=0, size=32)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_method("finetune", ddp_sources()["backbone"], task.num_classes)
        fit(model, task.train, None, TrainConfig(epochs=1, batch_size=3), seed=0,
            progress=False, execution=Execution(workers=1))
        weights.append(model.head.weight.detach().clone())
    assert torch.equal(*weights)


def test_a_non_finite_loss_is_skipped_on_the_device_without_reading_it():
    """The CUDA path (a gradient scaler at scale 1 and a fused SGD), run on the CPU."""
    torch.manual_seed(0)
    model = build_method("finetune", ddp_sources()["backbone"], 3)
    optimizer = torch.optim.SGD(model.param_groups(0.1), lr=0.1, momentum=0.9, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4) % 3
    training_step(model, optimizer, x, y, scaler=scaler)  # a finite step: the weights move
    before = [p.detach().clone() for p in model.parameters()]
    loss, _ = training_step(model, optimizer, x * float("nan"), y, scaler=scaler)
    assert not torch.isfinite(loss)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    training_step(model, optimizer, x, y, scaler=scaler)  # and training goes on
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        training_step(model, optimizer, x * float("nan"), y)  # no scaler: raised at once


def test_mixed_precision_trains_with_bfloat16_autocast():
    train, val = ddp_task()
    weights, dtypes = [], set()
    for amp in (False, True):
        torch.manual_seed(0)
        model = build_method("finetune", ddp_sources()["backbone"], 3)
        model.head.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
        history = fit(model, train, val, TrainConfig(epochs=2, batch_size=6), progress=False,
                      device="cpu", execution=Execution(amp=amp))
        assert history.frame()["loss"].notna().all()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert dtypes == {torch.float32, torch.bfloat16}
    assert torch.isfinite(weights[1]).all() and not torch.equal(*weights)
    torch.testing.assert_close(weights[1], weights[0], atol=0.05, rtol=0)
    assert Execution().autocast_dtype(torch.device("cpu")) is None  # default: CUDA only


def test_execution_and_sync_batchnorm_are_checked():
    with pytest.raises(ValueError, match="workers must be an integer ≥ 0"):
        Execution(workers=-1)
    train, _ = ddp_task()
    model = build_method("spottune", ddp_sources()["backbone"], 3)
    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
        fit(model, train, config=ddp_config(), progress=False,
            execution=Execution(sync_batchnorm=True))
    distributed.sync_batchnorm(model)
    kinds = {type(m) for name, m in model.named_modules() if "norm" in type(m).__name__.lower()}
    frozen = [m for m in model.modules() if isinstance(m, Frozen)]
    assert nn.SyncBatchNorm in kinds and frozen
    assert not any(isinstance(m, nn.SyncBatchNorm) for f in frozen for m in f.modules())


@pytest.fixture(scope="module")
def ddp_report(tmp_path_factory) -> dict:
    """What ``ddp_worker.py`` gathered from two processes under torchrun."""
    out = tmp_path_factory.mktemp("ddp") / "report.pt"
    completed = subprocess.run([*TORCHRUN, str(TESTS / "ddp_worker.py"), str(out)],
                               capture_output=True, text=True, timeout=300, env=ENV,
                               cwd=TESTS)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_every_method_ends_with_the_same_weights_in_every_process(ddp_report):
    assert ddp_report["world"] == 2
    first, second = ddp_report["digests"]
    assert first.keys() == second.keys() and "gtn with warm-up" in first
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_two_processes_reach_the_weights_of_one_with_the_same_global_batch(ddp_report):
    train, _ = ddp_task()
    source = ddp_sources()["backbone"]
    torch.manual_seed(0)
    linear = build_method("linear", source, 3)
    fit(linear, train, None, ddp_config(augment=False), seed=0, progress=False, device="cpu")
    for name, value in linear.state_dict().items():
        torch.testing.assert_close(ddp_report["linear"][name], value, msg=name)
    assert not torch.equal(ddp_report["linear"]["head.weight"],
                           build_method("linear", ddp_sources()["backbone"], 3).head.weight)


def test_delta_attention_is_computed_once_and_the_same_everywhere(ddp_report):
    first, second = ddp_report["delta_weights"]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(w.std() > 0 for w in first)  # the attention, not the all-ones start


def test_gathered_evaluation_covers_every_example_once_in_order(ddp_report):
    _, val = ddp_task()
    spottune = build_method("spottune", ddp_sources()["backbone"], 3)
    spottune.load_state_dict(ddp_report["spottune"]["state"])
    alone = evaluate(spottune, val, batch_size=4)
    assert torch.equal(ddp_report["spottune"]["y"], val.tensors[1])
    torch.testing.assert_close(ddp_report["spottune"]["logits"], alone.logits)
    for name, value in alone.decisions.items():  # other batches: float rounding may differ
        torch.testing.assert_close(ddp_report["spottune"]["decisions"][name], value, msg=name)
    assert torch.equal(ddp_report["spottune"]["decisions"]["route"], alone.decisions["route"])
    assert ddp_report["spottune"]["accuracy"] == pytest.approx(alone.accuracy)


def test_torchrun_run_prints_one_result(folder):
    completed = subprocess.run(
        [*TORCHRUN, "-m", "tlgates", "run", "finetune", "--target", f"folder:{folder}",
         "--arch", "resnet18", "--size", "64", "--workers", "1", "--epochs", "2", "--seeds",
         "1", "--shots", "2", "--batch-size", "6", "--json", "--quiet"],
        capture_output=True, text=True, timeout=300, env=ENV,
        cwd=Path(__file__).resolve().parent.parent)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, completed.stdout
    result = json.loads(lines[0])
    assert result["method"] == "finetune" and len(result["accuracies"]) == 1
