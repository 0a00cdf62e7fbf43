"""The pre-trained source models, trained on printed glyphs and cached under data/.

``source_model()`` gives the tiny ResNet every CNN method starts from; ``rnn_source_model()``
the row-by-row LSTM of PTU's recurrent demo (``ptu-rnn``); ``source_network(kind)`` the one a
registered method takes (``MethodSpec.source``). Each loads the cached network when the cache
file is present and valid, and otherwise trains it (about a minute, and seconds for the LSTM,
on a laptop CPU) and writes the cache. The cache is loaded with
``torch.load(..., weights_only=True)``; a corrupt or stale file is rebuilt with a warning.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlgates.backbones import Backbone, tiny_resnet
from tlgates.data import GLYPH_CLASSES, glyph_dataset
from tlgates.methods.base import SOURCE_KINDS, Classifier, TransferModel
from tlgates.methods.ptu import RecurrentClassifier, RowLSTM
from tlgates import cache, cpu
from tlgates.paths import data_dir
from tlgates.train import TrainConfig, evaluate, fit

# Bump when pre-training changes, so that old cache files are not used (2: even batches).
CACHE_VERSION = 2
RNN_CACHE_VERSION = 2


def _config_key(version: int, config: Any) -> str:
    text = json.dumps({"version": version, **asdict(config)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _same_config(config: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda saved: saved["config"] == asdict(config)


def _pretrain(model: TransferModel, train: TensorDataset, seed: int, loop: TrainConfig,
              progress: bool) -> tuple[float, float]:
    """Train ``model`` on the glyphs ``train``; return (accuracy on held-out glyphs, seconds)."""
    held_out = glyph_dataset(20, seed=seed + 1)
    start = time.perf_counter()
    with cpu.threads(cpu.choose_threads()):
        fit(model, train, config=loop, seed=seed, device="cpu", progress=progress)
    seconds = time.perf_counter() - start
    return evaluate(model, held_out).accuracy, seconds


# ----------------------------------------------------------------------------- CNN source
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
        return _config_key(CACHE_VERSION, self)


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


def source_model(config: SourceConfig = SourceConfig(), *, progress: bool = True,
                 rebuild: bool = False) -> SourceModel:
    """The pre-trained source backbone (eval mode, on the CPU), from cache or trained now."""
    path = data_dir() / f"source-{config.key()}.pt"
    saved = None if rebuild else cache.load(
        path, version=CACHE_VERSION, what="source model", matches=_same_config(config),
        rebuild="training it again (about a minute)")
    if saved is not None:
        backbone = _build(config)
        backbone.load_state_dict(saved["backbone"])
        return SourceModel(backbone.eval(), config, saved["glyph_accuracy"],
                           saved["train_seconds"], from_cache=True)
    torch.manual_seed(config.seed)
    model = Classifier(_build(config), len(GLYPH_CLASSES))
    loop = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size)
    train = glyph_dataset(config.glyphs_per_class, seed=config.seed)
    accuracy, seconds = _pretrain(model, train, config.seed, loop, progress)
    backbone = model.backbone
    cache.save(path, {"config": asdict(config), "backbone": backbone.state_dict(),
                      "glyph_accuracy": accuracy, "train_seconds": seconds},
               version=CACHE_VERSION)
    return SourceModel(backbone.eval(), config, accuracy, seconds)


# ----------------------------------------------------------------------------- RNN source


@dataclass(frozen=True)
class RNNSourceConfig:
    """How the recurrent source model is pretrained on glyphs; every field is in the cache key."""

    hidden: int = 64
    forget_bias: float = 1.0
    glyphs_per_class: int = 160
    epochs: int = 5
    lr: float = 0.5
    batch_size: int = 64
    seed: int = 0

    def key(self) -> str:
        return _config_key(RNN_CACHE_VERSION, self)


@dataclass
class RNNSource:
    """The pretrained :class:`RowLSTM` and how well it reads held-out glyphs."""

    encoder: RowLSTM
    config: RNNSourceConfig
    glyph_accuracy: float
    train_seconds: float
    from_cache: bool = field(default=False)

    def __repr__(self) -> str:
        origin = "loaded from cache" if self.from_cache else "trained now"
        return (f"RNNSource(row LSTM, {self.config.hidden} hidden units, "
                f"{sum(p.numel() for p in self.encoder.parameters()):,} parameters, "
                f"{self.glyph_accuracy:.1%} on held-out glyphs, {origin})")


def rnn_source_model(config: RNNSourceConfig = RNNSourceConfig(), *, progress: bool = True,
                     rebuild: bool = False) -> RNNSource:
    """The row-by-row LSTM pretrained on glyphs, from ``data_dir()`` or trained now (seconds).

    The cache is read with ``torch.load(..., weights_only=True)``; a corrupt or stale file is
    trained again with a warning.
    """
    path = data_dir() / f"rnn-source-{config.key()}.pt"
    saved = None if rebuild else cache.load(
        path, version=RNN_CACHE_VERSION, what="RNN source model", matches=_same_config(config),
        rebuild="training it again (seconds)")
    if saved is not None:
        encoder = RowLSTM(saved["row_size"], config.hidden, config.forget_bias)
        encoder.load_state_dict(saved["encoder"])
        return RNNSource(encoder.eval(), config, saved["glyph_accuracy"],
                         saved["train_seconds"], from_cache=True)
    train = glyph_dataset(config.glyphs_per_class, seed=config.seed)
    row_size = train.tensors[0].shape[1] * train.tensors[0].shape[3]
    torch.manual_seed(config.seed)
    model = RecurrentClassifier(RowLSTM(row_size, config.hidden, config.forget_bias),
                                len(GLYPH_CLASSES))
    loop = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size)
    accuracy, seconds = _pretrain(model, train, config.seed, loop, progress)
    encoder = model.encoder.eval()
    cache.save(path, {"config": asdict(config), "row_size": row_size,
                      "encoder": encoder.state_dict(), "glyph_accuracy": accuracy,
                      "train_seconds": seconds}, version=RNN_CACHE_VERSION)
    return RNNSource(encoder, config, accuracy, seconds)


def source_network(kind: str = "backbone", source: SourceModel | None = None, *,
                   progress: bool = True) -> nn.Module:
    """The pre-trained network of ``kind`` (a method's ``MethodSpec.source``): the glyph
    backbone (``source`` when given, else :func:`source_model`) or the row LSTM."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    if kind == "row-lstm":
        return rnn_source_model(progress=progress).encoder
    return (source if source is not None else source_model(progress=progress)).backbone
