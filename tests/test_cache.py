import warnings

import pytest
import torch

from tlgates import cache


def test_a_saved_file_loads_back_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "thing.pt"
    cache.save(path, {"x": torch.arange(3)}, version=2)
    assert [p.name for p in tmp_path.iterdir()] == ["thing.pt"]
    saved = cache.load(path, version=2, what="thing", rebuild="making it again")
    assert torch.equal(saved["x"], torch.arange(3)) and saved["version"] == 2


def test_a_missing_file_is_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(tmp_path / "none.pt", version=1, what="x", rebuild="y") is None


@pytest.mark.parametrize("damage, reason", [
    ("corrupt", "corrupt"),
    ("version", "from another version of tlgates (format 1)"),
    ("settings", "made with other settings"),
])
def test_an_unusable_file_is_one_line_of_ours(tmp_path, damage, reason):
    path = tmp_path / "source.pt"
    if damage == "corrupt":
        path.write_bytes(b"\x80\x04not a checkpoint")
    else:
        cache.save(path, {"config": {"width": 16}}, version=1)
    with pytest.warns(UserWarning) as warned:  # exactly one warning: ours
        assert cache.load(path, version=1 if damage != "version" else 2, what="source model",
                          rebuild="training it again (about a minute)",
                          matches=lambda saved: saved["config"] == {"width": 8}) is None
    assert len(warned) == 1
    message = str(warned[0].message)
    assert message == (f"the cached source model source.pt is {reason}; "
                       "training it again (about a minute)")
