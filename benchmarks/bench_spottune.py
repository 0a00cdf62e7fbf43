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

import argparse

import torch
import torch.nn.functional as F

from tlgates.backbones import TORCHVISION_ARCHS, tiny_resnet, torchvision_resnet
from tlgates.benchmark import step_times
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="tiny", choices=("tiny",) + TORCHVISION_ARCHS)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    source = tiny_resnet() if args.arch == "tiny" else torchvision_resnet(args.arch)
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
    for model in models.values():
        model.to(device)
    x = torch.rand(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    table = step_times(models, x, y, rounds=args.rounds, steps=args.steps)
    where = (f"{args.arch}, {args.size}×{args.size}, batch {args.batch_size}, {device}"
             + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""))
    print(f"Training step, median over {args.rounds} interleaved rounds ({where}):")
    print(table.to_string())
    ratio = table.loc["spottune", "ratio to finetune"]
    verdict = "within" if ratio <= TARGET_RATIO else "ABOVE"
    print(f"SpotTune costs {ratio:.2f}× a fine-tuning step: {verdict} the {TARGET_RATIO}× "
          "target.")


if __name__ == "__main__":
    main()
