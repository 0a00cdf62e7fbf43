"""The pre-trained source model: a tiny ResNet trained on printed glyphs, cached under data/.

``source_model()`` loads the cached network when the cache file is present and valid, and
otherwise trains it (about a minute on a laptop CPU) and writes the cache. The cache is loaded
with ``torch.load(..., weights_only=True)``; a corrupt or stale file is rebuilt with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from tlgates.backbones import Backbone, tiny_resnet
from tlgates.data import GLYPH_CLASSES, glyph_dataset
from tlgates.methods.base import Classifier
from tlgates.paths import data_dir
from tlgates.train import TrainConfig, evaluate, fit

CACHE_VERSION = 1


@dataclass(frozen=True)
class SourceConfig:
    """How the source model is built; every field is part of the cache key."""

    width: int = 16
    blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1)
    glyphs_per_class: int = 160
    epochs: int = 3
    lr: float = 0.05
    batch_size: int = 64
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass
class SourceModel:
    """The pre-trained backbone and how well it does on held-out glyphs."""

    backbone: Backbone
    config: SourceConfig
    glyph_accuracy: float
    train_seconds: float
    from_cache: bool = field(default=False)

    def __repr__(self) -> str:
        origin = "loaded from cache" if self.from_cache else "trained now"
        return (f"SourceModel(tiny ResNet width {self.config.width}, "
                f"{sum(p.numel() for p in self.backbone.parameters()):,} parameters, "
                f"{self.glyph_accuracy:.1%} on held-out glyphs, {origin})")


def _build(config: SourceConfig) -> Backbone:
    return tiny_resnet(config.width, config.blocks_per_stage)


def _train(config: SourceConfig, progress: bool) -> tuple[Backbone, float, float]:
    torch.manual_seed(config.seed)
    model = Classifier(_build(config), len(GLYPH_CLASSES))
    train = glyph_dataset(config.glyphs_per_class, seed=config.seed)
    held_out = glyph_dataset(20, seed=config.seed + 1)
    loop = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size)
    start = time.perf_counter()
    fit(model, train, config=loop, seed=config.seed, device="cpu", progress=progress)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, held_out).accuracy
    return model.backbone, accuracy, seconds


def source_model(config: SourceConfig = SourceConfig(), *, progress: bool = True,
                 rebuild: bool = False) -> SourceModel:
    """The pre-trained source backbone (eval mode, on the CPU), from cache or trained now."""
    path = data_dir() / f"source-{config.key()}.pt"
    if path.exists() and not rebuild:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("config") != asdict(config) or saved.get("version") != CACHE_VERSION:
                raise ValueError("it was built with other settings")
            backbone = _build(config)
            backbone.load_state_dict(saved["backbone"])
            return SourceModel(backbone.eval(), config, saved["glyph_accuracy"],
                               saved["train_seconds"], from_cache=True)
        except Exception as err:  # any unreadable or mismatched file is rebuilt
            warnings.warn(f"the cached source model {path} is unusable ({err}); "
                          "training it again", stacklevel=2)
    backbone, accuracy, seconds = _train(config, progress)
    saved = {"version": CACHE_VERSION, "config": asdict(config),
             "backbone": backbone.state_dict(), "glyph_accuracy": accuracy,
             "train_seconds": seconds}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent builds do not collide
    torch.save(saved, tmp)
    tmp.replace(path)
    return SourceModel(backbone.eval(), config, accuracy, seconds)
