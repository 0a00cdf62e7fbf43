"""Training-step time of SpotTune (arXiv 1811.08737) against plain fine-tuning, in one run.

The models are timed in turns on the same batch (``tlgates.benchmark.step_times``), so a busy
machine slows them alike. In training SpotTune runs BOTH copies of every block on the whole
batch (the straight-through gradient of a route needs both outputs), plus the policy network,
so a step costs more than fine-tuning's; the frozen copies' weights get no gradient, so their
backward pass is the input gradient only. The variants show where the time goes:

- ``spottune, routes given``: both copies and the blend, no policy network;
- ``spottune, frozen weights with gradients``: what ``requires_grad=False`` on the frozen copies
  saves (their weight gradients computed, then never used);
- ``policy network alone``: the policy's forward and backward.

Target: a ratio ≤ 2.3 to fine-tuning.

    python benchmarks/bench_spottune.py                 # tiny ResNet, 32×32, batch 16 (CPU)
    python benchmarks/bench_spottune.py --arch resnet18 --size 224 --batch-size 64 --device cuda
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tlgates.benchmark import (
    prepare, random_batch, random_source, report, setting, step_parser, step_times,
)
from tlgates.methods import TransferModel, build_method
from tlgates.methods.spottune import SpotTune

TARGET_RATIO = 2.3


class GivenRoutes(TransferModel):
    """SpotTune trained on fixed random routes: both copies and the blend, no policy."""

    def __init__(self, model: SpotTune, routes: torch.Tensor):
        super().__init__()
        self.model, self.routes = model, routes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, routes=self.routes)

    def param_groups(self, lr: float) -> list[dict]:
        return self.model.param_groups(lr)[:2]


class PolicyAlone(TransferModel):
    """The policy network's forward and backward (a stand-in loss on its logits)."""

    def __init__(self, model: SpotTune):
        super().__init__()
        self.policy = model.policy

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha = self.policy(x)
        return {"policy": F.gumbel_softmax(alpha, tau=1.0, hard=True)[..., 1].mean()}


def main() -> None:
    args = step_parser(__doc__.split("\n")[0]).parse_args()
    device = prepare(args)
    source = random_source(args.arch)
    num_blocks = len(source.blocks)
    routes = torch.randint(0, 2, (args.batch_size, num_blocks), device=device).float()
    wasteful = build_method("spottune", source, args.classes)
    wasteful.frozen_blocks.requires_grad_(True)  # computed, never stepped
    models = {
        "finetune": build_method("finetune", source, args.classes),
        "spottune": build_method("spottune", source, args.classes),
        "spottune, routes given": GivenRoutes(build_method("spottune", source, args.classes),
                                              routes),
        "spottune, frozen weights with gradients": wasteful,
        "policy network alone": PolicyAlone(build_method("spottune", source, args.classes)),
    }
    table = step_times(models, *random_batch(args, device), rounds=args.rounds,
                       steps=args.steps)
    report(table, setting(args, device), args.rounds, row="spottune", label="SpotTune",
           target=TARGET_RATIO)


if __name__ == "__main__":
    main()
