"""DELTA (arXiv 1901.09229): fast channel attention against the naive recipe, and step time.

1. Channel attention. The naive recipe runs the whole network once per channel and batch; ours
   keeps each stage's output and runs only the rest of the network on stacked copies with one
   channel zeroed each (``tlgates.methods.delta.channel_loss_rises``). Both run on the same
   weights, the same head (fitted once) and the same data; the attention weights must agree to
   1e-5 and the speed-up target is ≥ 5×.
2. Training step against plain fine-tuning, in one run (``tlgates.benchmark.step_times``):
   DELTA adds one source forward under ``no_grad`` per batch; target ≤ 1.5×.

    python benchmarks/bench_delta.py                  # source model, digits 5/class (CPU)
    python benchmarks/bench_delta.py --arch resnet18 --size 64 --examples 16
    python benchmarks/bench_delta.py --arch resnet50 --size 224 --device cuda --batch-size 64
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import TensorDataset

from tlgates.backbones import Backbone, torchvision_resnet
from tlgates.benchmark import prepare, random_batch, report, setting, step_parser, step_times
from tlgates.methods import build_method
from tlgates.methods.delta import (
    attention_weights, channel_loss_rises, channel_loss_rises_naive, check_blocks, fit_probe,
)

TARGET_SPEEDUP = 5.0
TARGET_STEP_RATIO = 1.5
TOLERANCE = 1e-5


def _source_and_data(args: argparse.Namespace, device: torch.device
                     ) -> tuple[Backbone, TensorDataset, int, str]:
    if args.arch == "tiny":
        from tlgates.data import load_target
        from tlgates.source import source_model
        task = load_target("digits", shots=args.shots, seed=0)
        source = source_model(progress=False).backbone
        x, y = (t[: args.examples] for t in task.train.tensors)
        return source.to(device).eval(), TensorDataset(x, y), task.num_classes, \
            f"the source model on digits, {args.shots}/class"
    torch.manual_seed(0)
    source = torchvision_resnet(args.arch).to(device).eval()
    n = args.examples or 16
    data = TensorDataset(torch.rand(n, 3, args.size, args.size), torch.arange(n) % args.classes)
    return source, data, args.classes, f"{args.arch} (random weights), {args.size}×{args.size}"


def _timed(fn, device: torch.device):
    """``(fn(), wall seconds, CPU seconds of this process)``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start, time.process_time() - cpu


def bench_attention(args: argparse.Namespace, device: torch.device) -> None:
    source, data, num_classes, what = _source_and_data(args, device)
    blocks = check_blocks(source)
    x, labels = (t.to(device) for t in data.tensors)
    with torch.no_grad():
        feats = source(x)
    head, probe_s, _ = _timed(lambda: fit_probe(feats, labels, num_classes), device)
    kwargs = {"batch_size": args.attention_batch}
    channels = sum(source.block_channels[b] for b in blocks)
    print(f"Channel attention of {what}: {len(labels)} examples, {channels} channels in "
          f"blocks {blocks}; the head fitted once ({probe_s:.2f} s).")
    times: dict[str, list[tuple[float, float]]] = {"fast": [], "naive": []}
    for _ in range(args.repeats):  # interleaved, so that a busy machine slows both alike
        (fast, fast_base), *t = _timed(lambda: channel_loss_rises(
            source, head, data, blocks, **kwargs), device)
        times["fast"].append(tuple(t))
        (naive, naive_base), *t = _timed(lambda: channel_loss_rises_naive(
            source, head, data, blocks, **kwargs), device)
        times["naive"].append(tuple(t))
    (fast_s, fast_cpu), (naive_s, naive_cpu) = (
        (min(w for w, _ in times[k]), min(c for _, c in times[k])) for k in ("fast", "naive"))
    rise_diff = max((f - n).abs().max().item() for f, n in zip(fast, naive))
    weight_diff = max((attention_weights(f, args.temperature)
                       - attention_weights(n, args.temperature)).abs().max().item()
                      for f, n in zip(fast, naive))
    print(f"  best of {args.repeats}:                                  wall      CPU")
    print(f"  naive (one forward per channel and batch): {naive_s:8.3f} s {naive_cpu:8.3f} s")
    print(f"  fast (stage outputs kept, masks stacked):  {fast_s:8.3f} s {fast_cpu:8.3f} s")
    speedup, cpu_speedup = naive_s / fast_s, naive_cpu / fast_cpu
    print(f"  speed-up {speedup:.1f}× in wall time, {cpu_speedup:.1f}× in CPU time "
          f"({'meets' if speedup >= TARGET_SPEEDUP else 'BELOW'} the {TARGET_SPEEDUP:g}× "
          "target in wall time)")
    same = weight_diff <= TOLERANCE
    print(f"  largest difference: loss rises {rise_diff:.2e}, base loss "
          f"{abs(fast_base - naive_base):.2e}, weights (T = {args.temperature:g}) "
          f"{weight_diff:.2e}: {'same' if same else 'NOT the same'} weights to {TOLERANCE:g}")


def bench_step(args: argparse.Namespace, device: torch.device) -> None:
    source, data, num_classes, what = _source_and_data(args, device)
    models = {"finetune": build_method("finetune", source, num_classes),
              "l2sp": build_method("l2sp", source, num_classes),
              "fml2": build_method("fml2", source, num_classes),
              "delta": build_method("delta", source, num_classes)}
    models["delta"].on_fit_start(data)
    table = step_times(models, *random_batch(args, device, num_classes), rounds=args.rounds,
                       steps=args.steps)
    print()
    report(table, setting(args, device, what), args.rounds, row="delta", label="DELTA",
           target=TARGET_STEP_RATIO)


def main() -> None:
    parser = step_parser(__doc__.split("\n")[0], size_help="image side (torchvision archs)")
    parser.add_argument("--shots", type=int, default=5, help="labels per class (tiny)")
    parser.add_argument("--examples", type=int, default=None,
                        help="examples for the attention (default: the whole training set)")
    parser.add_argument("--attention-batch", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="attention timings (best of)")
    parser.add_argument("--skip", choices=("attention", "step"), default=None)
    args = parser.parse_args()
    device = prepare(args)
    if args.skip != "attention":
        bench_attention(args, device)
    if args.skip != "step":
        bench_step(args, device)


if __name__ == "__main__":
    main()
