import numpy as np
import pytest
import torch
from PIL import Image

from components.config import ConfigError, DataConfig
from components.data import ImageDataset, load_dataset, stratified_split


def test_digits_shape_range_and_split(digits):
    assert digits.images.shape == (1797, 1, 8, 8)
    assert digits.images.min() >= -1 and digits.images.max() <= 1
    assert digits.images.min() == -1 and digits.images.max() == 1
    assert digits.num_classes == 10
    _, y_eval = digits.split("eval")
    _, y_train = digits.split("train")
    assert len(y_eval) + len(y_train) == 1797
    # stratified: every class in both splits at about the configured fraction
    for c in range(10):
        frac = (y_eval == c).sum().item() / ((y_eval == c).sum() + (y_train == c).sum()).item()
        assert abs(frac - 0.25) < 0.02


def test_split_is_seeded():
    labels = np.repeat(np.arange(5), 20)
    a, b = stratified_split(labels, 0.3, 1), stratified_split(labels, 0.3, 1)
    assert (a == b).all()
    assert not (a == stratified_split(labels, 0.3, 2)).all()


def test_resolution_from_config():
    d = load_dataset(DataConfig(resolution=16))
    assert d.images.shape[1:] == (1, 16, 16)


def test_fingerprint_and_roundtrip(tmp_path, digits):
    digits.save(tmp_path / "d")
    back = ImageDataset.load(tmp_path / "d")
    assert back.fingerprint() == digits.fingerprint()
    other = load_dataset(DataConfig(split_seed=3))
    assert other.fingerprint() != digits.fingerprint()


def _write_folder(root, classes=("cat", "dog"), n=3, size=(10, 10), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / c / f"{i}.png")


def test_image_folder_source(tmp_path):
    _write_folder(tmp_path)
    d = load_dataset(DataConfig(source="folder", path=str(tmp_path), resolution=8))
    assert d.images.shape == (6, 3, 8, 8)
    assert d.class_names == ["cat", "dog"]
    assert sorted(d.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert d.images.min() >= -1 and d.images.max() <= 1


def test_image_folder_grayscale(tmp_path):
    _write_folder(tmp_path, mode="L")
    d = load_dataset(DataConfig(source="folder", path=str(tmp_path), resolution=8))
    assert d.images.shape[1] == 1


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path)))


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "nope")))


def test_unreadable_image_names_the_file(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ConfigError, match=r"cannot read image '.*broken\.png'"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path)))


def test_channel_conversion_of_grey_digits():
    d = load_dataset(DataConfig(channels=3))
    assert d.images.shape[1] == 3
    assert torch.equal(d.images[:, 0], d.images[:, 2])
