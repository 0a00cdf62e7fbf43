"""Backbones with an explicit structure that the gated methods can wrap.

Every backbone is a :class:`Backbone`: a ``stem``, an ordered ``blocks`` list of residual blocks,
and global average pooling to a ``feature_dim`` vector. Methods that route, gate or regularise
per block (SpotTune, AdaFilter, PTU, DELTA) walk ``stem`` → ``blocks`` → ``pool`` themselves, so
the same method code runs on the tiny CIFAR-style ResNet used on a laptop and on torchvision
ResNets on a GPU.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")
#: The per-channel mean and std of ImageNet that torchvision's ResNet weights expect.
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Backbone(nn.Module):
    """``features = pool(blocks[-1](… blocks[0](stem(x))))``, shape ``(B, feature_dim)``.

    Attributes:
        stem: the layers before the first residual block.
        blocks: the residual blocks, in order (``nn.ModuleList``).
        block_channels: output channels of each block.
        stage_ends: indices of the last block of each resolution stage (where DELTA and GTN
            read intermediate feature maps).
        feature_dim: size of the pooled feature vector (``block_channels[-1]``).
        normalization: the per-channel ``(mean, std)`` its inputs are normalised with, or
            ``None`` for images in [0, 1] as they are (the glyph-trained tiny ResNet).
    """

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module],
                 block_channels: Sequence[int], stage_ends: Sequence[int],
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None):
        super().__init__()
        if len(blocks) != len(block_channels):
            raise ValueError("blocks and block_channels must have the same length")
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.block_channels = list(block_channels)
        self.stage_ends = list(stage_ends)
        self.feature_dim = self.block_channels[-1]
        self.normalization = normalization

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """Global average pooling: ``(B, C, H, W) → (B, C)``."""
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_maps(x)[-1])

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, in order (the last one is what gets pooled)."""
        maps = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps


class BasicBlock(nn.Module):
    """The CIFAR ResNet block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def tiny_resnet(width: int = 16, blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
                in_channels: int = 3) -> Backbone:
    """A CIFAR-style ResNet for 32×32 inputs: stages of width ``width·2^s``, stride 2 between.

    The default (width 16, one block in each of four stages) has about 309k parameters and
    trains in seconds on a laptop CPU; ``blocks_per_stage=(3, 3, 3)`` is ResNet-20.
    """
    if width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if not blocks_per_stage or any(int(n) < 1 for n in blocks_per_stage):
        raise ValueError(f"blocks_per_stage must be positive integers, got {blocks_per_stage!r}")
    stem = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    )
    blocks, channels, stage_ends = [], [], []
    c_in = width
    for stage, n_blocks in enumerate(blocks_per_stage):
        c_out = width * 2 ** stage
        for i in range(int(n_blocks)):
            blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
            channels.append(c_out)
            c_in = c_out
        stage_ends.append(len(blocks) - 1)
    return Backbone(stem, blocks, channels, stage_ends)


def torchvision_resnet(arch: str = "resnet18", weights: str | Path | None = None) -> Backbone:
    """A torchvision ResNet in the :class:`Backbone` structure (its ``fc`` layer dropped).

    Its inputs are normalised with ImageNet's mean and std (:data:`IMAGENET_NORMALIZATION`),
    what torchvision's weights expect (a random initialisation does not mind).

    Args:
        arch: one of ``TORCHVISION_ARCHS``.
        weights: ``None`` (random initialisation, the default; nothing is downloaded); a
            torchvision weights name such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"``, which
            torchvision downloads once into its cache (``$TORCH_HOME``); or the path of a
            ``.pth`` file holding a state dict of that ResNet (read with ``weights_only=True``;
            an ``fc`` layer in it is ignored).

    Raises:
        ValueError: an unknown ``arch``, or a state dict that does not fit it.
        FileNotFoundError: ``weights`` looks like a path (it ends in ``.pth``/``.pt`` or names
            a folder) and there is no such file.
        RuntimeError: torchvision's weights could not be downloaded (the message says how to
            get them offline).
    """
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(TORCHVISION_ARCHS)}; got {arch!r}")
    path = _weights_file(weights)
    try:
        net = getattr(resnet, arch)(weights=None if path else weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise RuntimeError(
            f"Could not load torchvision weights {weights!r} for {arch} ({err}). They are "
            "downloaded on first use: connect to the network once, or copy the .pth file into "
            "$TORCH_HOME/hub/checkpoints, or use no weights (weights=None, or no --weights) for a "
            "random initialisation."
        ) from err
    if path is not None:
        _load_state_dict(net, path, arch)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    blocks, channels, stage_ends = [], [], []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            blocks.append(block)
            last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
            channels.append(last_bn.num_features)
        stage_ends.append(len(blocks) - 1)
    return Backbone(stem, blocks, channels, stage_ends, IMAGENET_NORMALIZATION)


def _weights_file(weights: str | Path | None) -> Path | None:
    """The file ``weights`` names, or ``None`` for a torchvision weights name (or no weights)."""
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if isinstance(weights, Path) or path.suffix in (".pth", ".pt") or path.exists() or (
            "/" in str(weights)):
        if not path.is_file():
            raise FileNotFoundError(f"weights: no such file {str(path)!r}; give a .pth file "
                                    "with a state dict of the ResNet, or a torchvision weights "
                                    "name such as IMAGENET1K_V1")
        return path
    return None


def _load_state_dict(net: nn.Module, path: Path, arch: str) -> None:
    """Load the ResNet state dict in ``path`` into ``net`` (its ``fc`` entries ignored)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"weights: {path} is not a readable state dict ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights: {path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(
        ("fc.", "module.fc."))}
    net.fc = nn.Identity()
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise ValueError(f"weights: {path} does not fit {arch} ({detail})") from None
