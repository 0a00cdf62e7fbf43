"""Training-step time of the parameter-efficient methods against plain fine-tuning, in one run.

BitFit/BatchNorm-only tuning (``bnfit``), LoRA (``lora``, and LoRA in its merged form at
evaluation, which costs nothing in training) and residual adapters (``adapter``) train few
parameters, but their backward still runs through the whole network: the input gradients of
every frozen layer are needed for the layers below. What they save is the weight gradients of the
frozen layers and the optimizer's state; the adapters add one 1×1 convolution per adapted layer
and LoRA two convolutions (A, then B), which on the tiny network cost more in per-operation
overhead than they save. The target is a ratio ≤ 1.6 for each (LoRA is the slowest).

    python benchmarks/bench_peft.py                    # tiny ResNet, 32×32, batch 16 (CPU)
    python benchmarks/bench_peft.py --threads 1        # on a shared, busy CPU
    python benchmarks/bench_peft.py --arch resnet18 --size 224 --batch-size 64 --device cuda
"""
from __future__ import annotations

from tlgates.benchmark import (
    prepare, random_batch, random_source, report, setting, step_parser, step_times,
)
from tlgates.methods import build_method

TARGET_RATIO = 1.6


def main() -> None:
    args = step_parser(__doc__.split("\n")[0], rounds=25).parse_args()
    device = prepare(args)
    source = random_source(args.arch)
    models = {name: build_method(name, source, args.classes)
              for name in ("finetune", "bnfit", "lora", "adapter")}
    table = step_times(models, *random_batch(args, device), rounds=args.rounds,
                       steps=args.steps)
    table["trainable parameters"] = [sum(p.numel() for p in models[name].parameters()
                                         if p.requires_grad) for name in table.index]
    worst = table.drop(index="finetune")["ratio to finetune"].idxmax()
    report(table, setting(args, device), args.rounds, row=worst, label=f"{worst} (the slowest)",
           target=TARGET_RATIO)


if __name__ == "__main__":
    main()
