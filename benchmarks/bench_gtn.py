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

from tlgates.benchmark import (
    prepare, random_batch, random_source, report, setting, step_parser, step_times,
)
from tlgates.methods import build_method
from tlgates.methods.gtn import ABLATION

TARGET_RATIO = 1.15


def main() -> None:
    args = step_parser(__doc__.split("\n")[0], rounds=25).parse_args()
    device = prepare(args)
    source = random_source(args.arch)
    models = {"finetune": build_method("finetune", source, args.classes)}
    for label in ("+ gate", "+ aux", "GTN"):
        models[label] = build_method("gtn", source, args.classes, **ABLATION[label])
    warmup = build_method("gtn", source, args.classes)
    warmup.freeze_backbone(True)
    models["GTN warm-up (backbone frozen)"] = warmup
    table = step_times(models, *random_batch(args, device), rounds=args.rounds,
                       steps=args.steps)
    report(table, setting(args, device), args.rounds, row="GTN", label="GTN",
           target=TARGET_RATIO)


if __name__ == "__main__":
    main()
