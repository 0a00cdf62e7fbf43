"""Data and settings shared by the full-scale tests and their torchrun worker: a small
in-memory task on which every method trains two steps under DDP."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from tlgates.backbones import Backbone, tiny_resnet
from tlgates.methods.ptu import RowLSTM
from tlgates.train import TrainConfig


def ddp_task() -> tuple[TensorDataset, TensorDataset]:
    """(train, val): 12 and 10 random 32×32 images of 3 classes (the same on every process)."""
    g = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.rand(12, 3, 32, 32, generator=g), torch.arange(12) % 3)
    val = TensorDataset(torch.rand(10, 3, 32, 32, generator=g), torch.arange(10) % 3)
    return train, val


def ddp_config(**changes: object) -> TrainConfig:
    """Two global batches of 6 per epoch: 3 examples per process with 2 processes."""
    return TrainConfig(**{"epochs": 2, "batch_size": 6, "lr": 0.05, **changes})


def ddp_sources() -> dict[str, torch.nn.Module]:
    """A random source network of each kind (the same on every process)."""
    torch.manual_seed(0)
    backbone: Backbone = tiny_resnet(width=8).eval()
    return {"backbone": backbone, "row-lstm": RowLSTM(3 * 32, 8).eval()}
