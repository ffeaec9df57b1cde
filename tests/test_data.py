import numpy as np
import pytest
import torch
from PIL import Image

from var_engine.data import DigitsDataset, ImageFolderDataset
from var_engine.errors import InputError


def test_digits_are_deterministic_32px_rgb_with_heldout_split():
    train, held = DigitsDataset("train"), DigitsDataset("heldout")
    assert len(train) == 4500 and len(held) == 500
    assert set(np.bincount(held.labels).tolist()) == {50}
    x, y = train[7]
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1
    assert torch.equal(x, DigitsDataset("train")[7][0])
    assert not set(train.indices) & set(held.indices)


def test_recolouring_changes_colours_per_epoch_only():
    ds = DigitsDataset("train", recolour=True)
    a = ds[0][0]
    ds.set_epoch(1)
    b = ds[0][0]
    assert not torch.equal(a, b)
    ds.set_epoch(0)
    assert torch.equal(a, ds[0][0])


def _write(path, mode, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


def test_image_folder_converts_and_skips(tmp_path):
    _write(tmp_path / "cats" / "a.png", "RGBA", (40, 30))
    _write(tmp_path / "cats" / "b.jpg", "L", (20, 20))
    _write(tmp_path / "dogs" / "c.png", "P", (64, 64))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, size=16)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 3 and len(ds.skipped) == 1
    items = [ds[i] for i in range(3)]
    assert all(x.shape == (3, 16, 16) for x, _ in items) and [y for _, y in items] == [0, 0, 1]
    # a fully transparent image lies on white (1), black grey and palette images stay black (-1)
    assert [torch.unique(x).tolist() for x, _ in items] == [[1.0], [-1.0], [-1.0]]


def test_image_folder_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(InputError, match="no class subfolders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "full" / "x.png", "RGB", (8, 8))
    with pytest.raises(InputError, match="no readable images"):
        ImageFolderDataset(tmp_path)
