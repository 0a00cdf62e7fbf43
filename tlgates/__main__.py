"""Command line: ``python -m tlgates methods``, ``run METHOD ...`` and ``sweep ...``.

Examples::

    python -m tlgates methods
    python -m tlgates methods --deviations
    python -m tlgates run finetune --shots 5 --seeds 3
    python -m tlgates run l2sp --set alpha=0.5 --json
    python -m tlgates run spottune --preset paper
    python -m tlgates run delta --target folder:PATH --arch resnet50 --weights FILE.pth \
        --size 224 --batch-size 64 --epochs 30 --seeds 3 --workers 8 --json
    torchrun --nproc_per_node=4 -m tlgates run delta ...   # the same, on 4 GPUs
    python -m tlgates sweep --methods all --targets digits,mnist --shots 1,5 --seeds 5 \
        --out results/sweep.jsonl --jobs 2

Bad arguments exit with status 2 and one line naming the argument and what is allowed.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

from tlgates import distributed, sweep
from tlgates.backbones import TORCHVISION_ARCHS, Backbone, torchvision_resnet
from tlgates.data import TARGETS, load_target
from tlgates.experiment import deviation_frame, run_method
from tlgates.methods import METHODS, PRESETS, get_method
from tlgates.train import Execution, TrainConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tlgates: error: {message}\n")


def _parse_set(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        params[name] = value
    return params


def _add_training(command: argparse.ArgumentParser) -> None:
    """The options shared by ``run`` and ``sweep``: the training loop and the recipe."""
    defaults = TrainConfig()
    command.add_argument("--epochs", type=int, default=defaults.epochs)
    command.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    command.add_argument("--batch-size", type=int, default=defaults.batch_size)
    command.add_argument("--preset", choices=PRESETS, default="tlgates",
                         help="recipe: tlgates' defaults, or the paper's (official code's) "
                              "value of every switchable deviation (default tlgates)")
    command.add_argument("--quiet", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tlgates", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = commands.add_parser("methods", help="list the methods and their hyperparameters")
    listing.add_argument("--deviations", action="store_true",
                         help="for each method, how tlgates differs from the paper and its "
                              "official code")
    run = commands.add_parser("run", help="train a method over seeds; print test accuracy")
    run.add_argument("method", help="a method name (see `python -m tlgates methods`)")
    run.add_argument("--target", default="digits",
                     help=f"target task: {', '.join(TARGETS)}, a torchvision data set name "
                          "or folder:PATH (default digits)")
    run.add_argument("--shots", type=int, default=5, help="labels per class (default 5)")
    run.add_argument("--seeds", type=int, default=3, help="number of seeds (0..S-1)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="a method hyperparameter; repeat for several")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object with the results on the last line")
    run.add_argument("--threads", type=int,
                     help="torch threads on the CPU (default: tlgates' choice, the cores idle "
                          "now; results depend on it)")
    run.add_argument("--no-cache", action="store_true",
                     help="train every seed again, even one in the run cache (data/runs)")
    scale = run.add_argument_group("full scale (a GPU, real images, torchvision ResNets)")
    scale.add_argument("--arch", choices=("tiny",) + TORCHVISION_ARCHS, default="tiny",
                       help="the source network: the glyph-trained tiny ResNet (default) or "
                            "a torchvision ResNet")
    scale.add_argument("--weights", metavar="FILE|NAME",
                       help="with a torchvision --arch: a .pth state dict of that ResNet, or a "
                            "torchvision weights name (IMAGENET1K_V1, DEFAULT; downloaded "
                            "once); default random initialisation")
    scale.add_argument("--size", type=int,
                       help="stream a torchvision data set or folder:PATH at SIZE pixels "
                            "(random resized crops and flips for training); default: 32×32 "
                            "copies in memory")
    scale.add_argument("--workers", type=int, default=0,
                       help="DataLoader processes that decode and augment (default 0)")
    scale.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="mixed precision, bfloat16 where supported (default: on CUDA)")
    scale.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best there "
                                        "is; under torchrun, each process's GPU)")
    scale.add_argument("--sync-bn", action="store_true",
                       help="SyncBatchNorm on the trainable path (CUDA under torchrun)")
    _add_training(run)
    grid = commands.add_parser(
        "sweep", help="train every (method, target, shots, seed); one JSON line per run, "
                      "resumable")
    grid.add_argument("--methods", default="all",
                      help="comma-separated method names, or all (default all)")
    grid.add_argument("--targets", default="digits",
                      help=f"comma-separated targets ({', '.join(TARGETS)}, ...; default "
                           "digits)")
    grid.add_argument("--shots", default="5",
                      help="comma-separated labels per class (default 5)")
    grid.add_argument("--seeds", type=int, default=5, help="number of seeds (0..S-1; default 5)")
    grid.add_argument("--out", required=True,
                      help="the results file (JSON lines); an existing one is resumed")
    grid.add_argument("--jobs", type=int, default=1,
                      help="settings trained at once, in worker processes (default 1)")
    grid.add_argument("--threads", type=int, default=1,
                      help="torch threads per run (default 1; results depend on it)")
    _add_training(grid)
    return parser


def _list_methods() -> None:
    for spec in METHODS.values():
        paper = f"  [{spec.paper}]" if spec.paper else ""
        print(f"{spec.name:10s} {spec.summary}{paper}")
        for name, param in spec.params.items():
            print(f"{'':12s}--set {name}={param.default}  {param.help} ({param.allowed()})")


def _list_deviations() -> None:
    for spec in METHODS.values():
        rows = spec.deviation_table()
        if not rows:
            continue
        print(f"\n{spec.name}  [{spec.paper or 'baseline'}]")
        for row in deviation_frame(spec.name).itertuples():
            switch = f"--set {row.switch}={row.paper}" if row.switch != "—" else "no switch"
            print(f"  {row.setting}: tlgates {row.tlgates} | paper {row.paper}  "
                  f"[{row.origin}; {switch}]\n      why: {row.why}")


# The first word of a library error names a keyword argument; say it as the command line does.
_FLAGS = {"name": "--target", "shots": "--shots", "epochs": "--epochs", "lr": "--lr",
          "batch_size": "--batch-size", "seeds": "--seeds", "size": "--size",
          "workers": "--workers", "weights": "--weights", "sync_batchnorm": "--sync-bn",
          "amp": "--amp"}


def _as_flag(err: Exception) -> str:
    first, _, rest = str(err).partition(" ")
    name = first.rstrip(":")
    return f"{_FLAGS[name]}{first[len(name):]} {rest}" if name in _FLAGS else str(err)


def _check_device(text: str | None) -> torch.device | None:
    """The ``--device``, checked to exist here (``None``: the best there is)."""
    if text is None:
        return None
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or mps, got {text!r}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if device.type not in available:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or mps, got {text!r}")
    if not available[device.type]:
        raise ValueError(f"--device {text}: no {device.type.upper()} device here; use --device "
                         "cpu (or leave --device out)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: there are {torch.cuda.device_count()} CUDA "
                         "device(s) here")
    return device


def _check_backbone(args: argparse.Namespace, spec: Any) -> Backbone | None:
    """The ``--arch`` network with its ``--weights`` (``None``: the glyph source)."""
    if args.arch == "tiny":
        if args.weights is not None:
            raise ValueError(f"--weights needs a torchvision --arch "
                             f"({', '.join(TORCHVISION_ARCHS)}); the tiny source is tlgates' own")
        return None
    if spec.source != "backbone":
        raise ValueError(f"--arch: method {spec.name!r} starts from a {spec.source}, not a "
                         "ResNet; leave --arch out")
    try:
        return torchvision_resnet(args.arch, args.weights)
    except RuntimeError as err:  # torchvision's weights could not be downloaded
        raise ValueError(f"--weights {args.weights}: {err}") from None
    except KeyError:
        raise ValueError(f"--weights must be a .pth file or a torchvision weights name such "
                         f"as IMAGENET1K_V1 or DEFAULT, got {args.weights!r}") from None


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything before training (ValueError naming the flag); return the keyword
    arguments of ``run_method`` that the flags give besides the method and the target."""
    spec = get_method(args.method)
    if args.seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1 (or left out: tlgates chooses), "
                         f"got {args.threads}")
    execution = Execution(workers=args.workers, amp=args.amp, sync_batchnorm=args.sync_bn)
    device = _check_device(args.device)
    cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if args.sync_bn and not (cuda and distributed.launched()):
        raise ValueError("--sync-bn needs CUDA and several processes under torchrun")
    try:
        load_target(args.target, shots=args.shots, seed=0, size=args.size)
    except (ValueError, FileNotFoundError) as err:  # a message not naming a flag is --target's
        message = _as_flag(err)
        raise type(err)(message if message.startswith("--") else f"--target {message}") \
            from None
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    params = spec.check(_parse_set(args.set), args.preset)
    return {"config": config, "params": params, "backbone": _check_backbone(args, spec),
            "size": args.size, "device": device, "execution": execution,
            "threads": args.threads, "cache": not args.no_cache}


def _names(flag: str, text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"{flag} takes a comma-separated list, got {text!r}")
    return names


def _check_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep's arguments, validated before anything trains (ValueError naming the flag)."""
    methods = list(METHODS) if args.methods == "all" else _names("--methods", args.methods)
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"--methods: unknown method {name!r}; choose all or some of: "
                             f"{', '.join(METHODS)}")
    try:
        shots = [int(k) for k in _names("--shots", args.shots)]
    except ValueError:
        raise ValueError(f"--shots takes comma-separated integers, got {args.shots!r}") from None
    targets = _names("--targets", args.targets)
    for target in targets:
        for k in shots:
            try:
                load_target(target, shots=k, seed=0)
            except ValueError as err:
                flag = "--shots" if str(err).startswith("shots") else "--targets"
                raise ValueError(f"{flag} ({target}): {err}") from None
    for flag, value in (("--seeds", args.seeds), ("--jobs", args.jobs),
                        ("--threads", args.threads)):
        if value < 1:
            raise ValueError(f"{flag} must be an integer ≥ 1, got {value}")
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    sweep.check_resumable(args.out, sweep.training_settings(config, args.preset, args.threads))
    return {"methods": methods, "targets": targets, "shots": shots, "seeds": args.seeds,
            "out": args.out, "jobs": args.jobs, "threads": args.threads, "config": config,
            "preset": args.preset, "progress": not args.quiet}


def _sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        options = _check_sweep(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(_as_flag(err))
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a kill stops as Ctrl-C does: the rows stay
    try:
        result = sweep.run_sweep(**options)
    except KeyboardInterrupt:
        print(f"interrupted: the finished runs are in {args.out}; run the same command again "
              "to resume", file=sys.stderr)
        return 130
    print(f"{len(result.results)} runs in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "methods":
        _list_deviations() if args.deviations else _list_methods()
        return 0
    if args.command == "sweep":
        return _sweep(parser, args)
    try:
        options = _check(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(_as_flag(err))
    result = run_method(args.method, target=args.target, shots=args.shots, seeds=args.seeds,
                        preset=args.preset, progress=not args.quiet, **options)
    printer = distributed.is_main()  # one result, printed by rank 0
    distributed.teardown()
    if not printer:
        return 0
    for seed, accuracy in zip(result.seeds, result.accuracies):
        print(f"seed {seed}: test accuracy {accuracy:.1%}", file=sys.stderr if args.json
              else sys.stdout)
    print(result.summary(), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
