"""Run by ``tests/test_scale.py`` under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each process trains the same things; rank 0 writes what the test compares into ``OUT``:

- every registered method, one epoch of two steps: a digest of each process's weights;
- the linear probe without augmentation: its weights (for the one-process comparison);
- DELTA: each process's attention weights;
- a trained SpotTune's evaluation on the validation set, gathered from both processes.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from scale_data import ddp_config, ddp_sources, ddp_task
from tlgates import distributed
from tlgates.methods import METHODS, build_method
from tlgates.train import evaluate, fit


def digest(model: torch.nn.Module) -> torch.Tensor:
    """All parameters and buffers of ``model``, flattened into one float64 vector."""
    return torch.cat([t.detach().double().flatten() for t in model.state_dict().values()
                      if t.is_floating_point()])


def main(out: Path) -> None:
    distributed.setup("cpu")
    train, val = ddp_task()
    sources = ddp_sources()
    report: dict[str, object] = {"world": distributed.world_size()}
    digests = {}
    for name, spec in METHODS.items():
        torch.manual_seed(0)
        model = build_method(name, sources[spec.source], 3)
        fit(model, train, None, ddp_config(epochs=1), seed=0, progress=False)
        digests[name] = digest(model)
    torch.manual_seed(0)
    warm_up = build_method("gtn", sources["backbone"], 3, warmup_epochs=1)
    fit(warm_up, train, None, ddp_config(), seed=0, progress=False)  # frozen, then trained
    digests["gtn with warm-up"] = digest(warm_up)
    report["digests"] = distributed.gather(digests)

    torch.manual_seed(0)
    linear = build_method("linear", sources["backbone"], 3)
    fit(linear, train, None, ddp_config(augment=False), seed=0, progress=False)
    report["linear"] = linear.state_dict()

    torch.manual_seed(0)
    delta = build_method("delta", sources["backbone"], 3)
    fit(delta, train, None, ddp_config(epochs=1), seed=0, progress=False)
    report["delta_weights"] = distributed.gather(
        [w.clone() for w in delta.regularizer.channel_weights])

    torch.manual_seed(0)
    spottune = build_method("spottune", sources["backbone"], 3)
    fit(spottune, train, val, ddp_config(epochs=1), seed=0, progress=False)
    result = evaluate(spottune, val, batch_size=4)
    report["spottune"] = {"state": spottune.state_dict(), "logits": result.logits,
                          "y": result.y, "decisions": result.decisions,
                          "accuracy": result.accuracy}
    if distributed.is_main():
        torch.save(report, out)
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
