"""Throughput at full scale: images per second of every method, streaming from an image folder,
against a plain reference loop written with torchvision alone (same model, data and batch).

Both read the same training images through the same transforms (random resized crop and
flip, decoded in DataLoader workers), train with SGD, momentum and a one-cycle schedule, and on
CUDA use bf16 autocast and channels-last. Images per second are measured over the epochs after
the first (worker start-up and first allocations excluded); fine-tuning and the reference loop
are measured in alternating rounds (the median is kept), so a busy machine slows both alike.
Each method's cost is printed as time per image relative to fine-tuning, beside the step-time
budget of its paper's benchmark where there is one.

    python benchmarks/bench_scale.py --threads 1          # CPU: ResNet-18 at 64 px, a folder
                                                          # of scikit-image crops (built here)
    python benchmarks/bench_scale.py --device cuda --arch resnet50 --size 224 \\
        --batch-size 64 --workers 8 --folder /data/flowers/train
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_adafilter import TARGET_RATIO as ADAFILTER
from bench_delta import TARGET_STEP_RATIO as DELTA
from bench_gtn import TARGET_RATIO as GTN
from bench_peft import TARGET_RATIO as PEFT
from bench_ptu import TARGET_RATIO as PTU
from bench_spottune import TARGET_RATIO as SPOTTUNE
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.models import resnet

from tlgates.backbones import IMAGENET_NORMALIZATION, TORCHVISION_ARCHS, torchvision_resnet
from tlgates.data import TargetTask, load_target, write_texture_folder
from tlgates.methods import METHODS, build_method
from tlgates.train import Execution, TrainConfig, fit

TARGET_REFERENCE_RATIO = 0.9  # tlgates' fine-tuning must keep 90% of the reference throughput
BUDGETS = {"gtn": GTN, "delta": DELTA, "fml2": DELTA, "spottune": SPOTTUNE,
           "adafilter": ADAFILTER, "ptu": PTU, "bnfit": PEFT, "lora": PEFT, "adapter": PEFT}


def reference_images_per_second(task: TargetTask, args: argparse.Namespace,
                                device: torch.device) -> float:
    """A plain torchvision training loop over the task's training images (the same files and
    transforms, read by torchvision's ``ImageFolder``)."""
    torch.manual_seed(0)
    net = getattr(resnet, args.arch)(num_classes=task.num_classes).to(device)
    augment = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(),
                         T.ToTensor(), T.Normalize(*IMAGENET_NORMALIZATION)])
    images = Subset(ImageFolder(task.name.removeprefix("folder:"), transform=augment),
                    task.train.indices.tolist())
    loader = DataLoader(images, batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.01,
                                                    total_steps=args.epochs * len(loader))
    cuda = device.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    marks = []
    net.train()
    for _ in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if cuda:
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())
    return len(task.train) * (args.epochs - 1) / (marks[-1] - marks[0])


def tlgates_images_per_second(method: str, task: TargetTask, args: argparse.Namespace,
                              device: torch.device) -> float:
    """``fit`` of ``method`` on the task's training images, no validation pass."""
    torch.manual_seed(0)
    model = build_method(method, torchvision_resnet(args.arch), task.num_classes)
    history = fit(model, task.train, None, TrainConfig(epochs=args.epochs, lr=0.01,
                                                       batch_size=args.batch_size),
                  device=device, progress=False, execution=Execution(workers=args.workers))
    seconds = history.frame()["seconds"]
    return len(task.train) * (args.epochs - 1) / (seconds.iloc[-1] - seconds.iloc[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=TORCHVISION_ARCHS)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="per measurement (≥ 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of fine-tuning and the reference loop")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--folder", help="an ImageFolder root (default: scikit-image crops, "
                                         "40 per class, written to a temporary folder)")
    parser.add_argument("--shots", type=int, default=28,
                        help="training images per class (default 28: all of the built "
                             "folder's pool)")
    parser.add_argument("--methods", default="all", help="comma-separated, or all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: default)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be ≥ 2 (the first epoch is not measured)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder) if args.folder else write_texture_folder(tmp, per_class=40)
        task = load_target(f"folder:{root}", shots=args.shots, seed=0, size=args.size,
                           normalization=IMAGENET_NORMALIZATION)
        where = (f"{args.arch}, {args.size}×{args.size}, batch {args.batch_size}, "
                 f"{len(task.train)} training images, {args.workers} worker(s), {device}"
                 + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""))
        print(f"Training throughput, images per second ({where}):")
        reference, finetune = [], []
        for _ in range(args.rounds):
            reference.append(reference_images_per_second(task, args, device))
            finetune.append(tlgates_images_per_second("finetune", task, args, device))
        ips = {"reference loop (torchvision)": statistics.median(reference),
               "finetune": statistics.median(finetune)}
        methods = [m for m, spec in METHODS.items() if spec.source == "backbone"] \
            if args.methods == "all" else args.methods.split(",")
        for method in methods:
            if method not in ips:
                ips[method] = tlgates_images_per_second(method, task, args, device)
    base = ips["finetune"]
    for name, value in ips.items():
        cost = base / value
        budget = f"  (budget ≤ {BUDGETS[name]:g}×)" if name in BUDGETS else ""
        print(f"  {name:30s} {value:8.1f} img/s   {cost:5.2f}× fine-tuning's time{budget}")
    ratio = base / ips["reference loop (torchvision)"]
    verdict = "meets" if ratio >= TARGET_REFERENCE_RATIO else "BELOW"
    print(f"tlgates' fine-tuning reaches {ratio:.2f} of the reference loop's throughput: "
          f"{verdict} the {TARGET_REFERENCE_RATIO:g} target.")


if __name__ == "__main__":
    main()
