"""Training-step time of AdaFilter (arXiv 1911.09659) against plain fine-tuning, in one run.

The models are timed in turns on the same batch (``tlgates.benchmark.step_times``), so a busy
machine slows them alike. AdaFilter runs every gated convolution once with both weight sets
(twice the filters of fine-tuning's), a second set of BatchNorms and an LSTM step per layer
input; the target is a ratio ≤ 2.5. To show where the time goes the script also times:

- AdaFilter with every gate forced to the fine-tuned path (the paired convolutions and BNs,
  but no gate network and no sampling): the cost of carrying the pre-trained half;
- AdaFilter with the Gumbel-sigmoid estimator (noise sampled per gate) and with the
  standardised gate input;
- AdaFilter whose paired convolution uses plain autograd (the weight gradient of both halves
  computed, the frozen half's thrown away) instead of its own backward; and with
  ``frozen_bn="batch"`` (the frozen BN cannot be folded into the frozen weights);
- and, with ``--profile``, the operators that take the most time in an AdaFilter step.

On a CPU shared with other jobs, ``--threads 1`` gives the fairer ratio: with several threads
per process, AdaFilter's many tiny operations (the LSTM's 16×32 products) wait for busy cores
far longer than fine-tuning's few large ones.

    python benchmarks/bench_adafilter.py                 # tiny ResNet, 32×32, batch 16 (CPU)
    python benchmarks/bench_adafilter.py --threads 1     # a fairer ratio on a busy machine
    python benchmarks/bench_adafilter.py --arch resnet50 --size 224 --batch-size 64 --device cuda
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

import tlgates.methods.adafilter as adafilter
from tlgates.benchmark import (
    prepare, random_batch, random_source, report, setting, step_parser, step_times,
)
from tlgates.methods import build_method
from tlgates.train import training_step

TARGET_RATIO = 2.5


class ForcedFinetuned(adafilter.AdaFilter):
    """Every gate on the fine-tuned path, and no gate network run at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.forcing("finetuned"):
            return super().forward(x)


class _CatAutograd:
    """Stand-in for ``_PairedConv2d``: plain autograd through ``conv(x, cat([W_ft, W_pt]))``."""

    @staticmethod
    def apply(x: torch.Tensor, w_ft: torch.Tensor, w_pt: torch.Tensor,
              bias: torch.Tensor | None, conv: nn.Conv2d) -> torch.Tensor:
        return F.conv2d(x, torch.cat([w_ft, w_pt]), bias, conv.stride, conv.padding,
                        conv.dilation)


class PlainAutograd(adafilter.AdaFilter):
    """AdaFilter with the paired convolution's own backward replaced by plain autograd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _paired_conv(_CatAutograd):
            return super().forward(x)


@contextmanager
def _paired_conv(function: type) -> Iterator[None]:
    before, adafilter._PairedConv2d = adafilter._PairedConv2d, function
    try:
        yield
    finally:
        adafilter._PairedConv2d = before


def main() -> None:
    parser = step_parser(__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true",
                        help="also list the operators that take the most time in a step")
    args = parser.parse_args()
    device = prepare(args)
    source = random_source(args.arch)
    models = {
        "finetune": build_method("finetune", source, args.classes),
        "adafilter": build_method("adafilter", source, args.classes),
        "all gates fine-tuned (no gate net)": ForcedFinetuned(source, args.classes),
        "gumbel estimator": build_method("adafilter", source, args.classes,
                                         estimator="gumbel"),
        "standardized gate input": build_method("adafilter", source, args.classes,
                                                gate_input="standardized"),
        "plain autograd paired conv": PlainAutograd(source, args.classes),
        "frozen_bn=batch (no folding)": build_method("adafilter", source, args.classes,
                                                     frozen_bn="batch"),
    }
    x, y = random_batch(args, device)
    table = step_times(models, x, y, rounds=args.rounds, steps=args.steps)
    report(table, setting(args, device), args.rounds, row="adafilter", label="AdaFilter",
           target=TARGET_RATIO)
    if args.profile:
        model = models["adafilter"]
        optimizer = torch.optim.SGD(model.param_groups(0.01), lr=0.01)
        with torch.profiler.profile() as profile:
            for _ in range(args.steps):
                training_step(model, optimizer, x, y)
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
