"""Training-step time of GTN (arXiv 1810.12521) against plain fine-tuning, in one run.

The models are timed in turns on the same batch (``tlgates.benchmark.step_times``), so a busy
machine slows them alike. Besides full GTN, the ablation variants show where the extra time goes
(the gate, the auxiliary head), and the warm-up step (backbone frozen) shows what the first
epochs cost. The paper claims a marginal extra cost; the auxiliary head reads the intermediate
map of the same forward pass, so the target is a ratio ≤ 1.15.

    python benchmarks/bench_gtn.py                    # tiny ResNet, 32×32, batch 16 (CPU)
    python benchmarks/bench_gtn.py --threads 1        # on a shared, busy CPU (see below)
    python benchmarks/bench_gtn.py --arch resnet18 --size 224 --batch-size 64 --device cuda

On a CPU shared with other jobs, use ``--threads 1``: with more threads than free cores,
PyTorch's worker threads wait for each other and the step times become erratic (ratios from
0.8 to 1.2 in one afternoon here), while one thread gives stable ratios.
"""
from __future__ import annotations

import argparse

import torch

from tlgates.backbones import TORCHVISION_ARCHS, tiny_resnet, torchvision_resnet
from tlgates.benchmark import step_times
from tlgates.methods import build_method
from tlgates.methods.gtn import ABLATION

TARGET_RATIO = 1.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="tiny", choices=("tiny",) + TORCHVISION_ARCHS)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    source = tiny_resnet() if args.arch == "tiny" else torchvision_resnet(args.arch)
    models = {"finetune": build_method("finetune", source, args.classes)}
    for label in ("+ gate", "+ aux", "GTN"):
        models[label] = build_method("gtn", source, args.classes, **ABLATION[label])
    warmup = build_method("gtn", source, args.classes)
    warmup.freeze_backbone(True)
    models["GTN warm-up (backbone frozen)"] = warmup
    for model in models.values():
        model.to(device)
    x = torch.rand(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    table = step_times(models, x, y, rounds=args.rounds, steps=args.steps)
    where = (f"{args.arch}, {args.size}×{args.size}, batch {args.batch_size}, {device}"
             + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""))
    print(f"Training step, median over {args.rounds} interleaved rounds ({where}):")
    print(table.to_string())
    ratio = table.loc["GTN", "ratio to finetune"]
    verdict = "within" if ratio <= TARGET_RATIO else "ABOVE"
    print(f"GTN costs {ratio:.2f}× a fine-tuning step: {verdict} the {TARGET_RATIO}× target.")


if __name__ == "__main__":
    main()
