import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from components.config import ConfigError, DataConfig
from components.data import ImageDataset, build_manifest, load_dataset, load_manifest, save_manifest, stratified_split
from components.data.builtin import materialize_digits, write_npz
from components.data.validation import DataValidationError
from components.data.versioning import data_lineage, dvc_md5, git_info
from tests.conftest import write_image_folder

ROOT = Path(__file__).resolve().parents[2]


def test_digits_shape_range_and_split(digits):
    assert digits.images.shape == (1797, 1, 8, 8)
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


def test_materialised_digits_match_the_committed_data_dvc(tmp_path):
    """The same bytes on every machine: the hash DVC recorded in the top-level data.dvc."""
    materialize_digits(tmp_path / "data" / "digits.npz")
    committed = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    assert committed["path"] == "data/digits.npz"
    assert dvc_md5(tmp_path / "data" / "digits.npz") == committed["md5"]
    with np.load(tmp_path / "data" / "digits.npz", allow_pickle=False) as z:
        assert z["images"].shape == (1797, 8, 8, 1) and z["images"].dtype == np.uint8
        assert z["labels"].shape == (1797,)


def test_dvc_md5_equals_dvc_itself(tmp_path):
    """Our hash is the one `dvc add` writes, for a nested folder."""
    data = tmp_path / "d"
    (data / "b" / "c").mkdir(parents=True)
    (data / "a.txt").write_text("one")
    (data / "b" / "c" / "x.bin").write_bytes(bytes(range(256)))
    (data / "b-c.txt").write_text("sorts between 'b' and 'b/c' as a string")
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env, timeout=120)
    subprocess.run([dvc, "add", "-q", "d"], cwd=tmp_path, check=True, env=env, timeout=120)
    assert dvc_md5(data) == yaml.safe_load((tmp_path / "d.dvc").read_text())["outs"][0]["md5"]
    assert dvc_md5(data / "a.txt") == "f97c5d29941bfb1b2fdab0874906ab82"   # md5("one")


def test_changed_data_changes_the_hash(tmp_path, digits_npz):
    path = tmp_path / "d.npz"
    with np.load(digits_npz) as z:
        images, labels = z["images"].copy(), z["labels"].copy()
    write_npz(path, {"images": images, "labels": labels})
    before = data_lineage(path)["data_md5"]
    images[0, 0, 0, 0] ^= 1
    write_npz(path, {"images": images, "labels": labels})
    assert data_lineage(path)["data_md5"] != before


def test_git_info_names_the_commit():
    info = git_info(ROOT)
    assert len(info["git_commit"]) == 40 and isinstance(info["git_dirty"], bool)


def test_manifest_rows_split_and_roundtrip(tmp_path, digits_npz, digits):
    m = build_manifest(DataConfig(path=digits_npz))
    assert len(m) == 1797 and m["readable"].all()
    assert set(m["split"]) == {"train", "eval"}
    assert (m[["height", "width", "channels"]] == [8, 8, 1]).all().all()
    assert m["path"].iloc[17] == f"{digits_npz}[17]" and len(m["sha256"].iloc[0]) == 64
    # the dataset uses the manifest's split
    assert torch.equal(digits.is_eval, torch.from_numpy((m["split"] == "eval").to_numpy()))
    save_manifest(m, tmp_path / "m.csv")
    back = load_manifest(tmp_path / "m.csv")
    assert back.equals(m) and back["class_name"].iloc[0] == "0"   # class names stay strings


def test_fingerprint_and_roundtrip(tmp_path, digits, digits_npz):
    digits.save(tmp_path / "d")
    back = ImageDataset.load(tmp_path / "d")
    assert back.fingerprint() == digits.fingerprint()
    other = load_dataset(DataConfig(path=digits_npz, split_seed=3))
    assert other.fingerprint() != digits.fingerprint()


def test_resolution_and_channels_from_config(digits_npz):
    d = load_dataset(DataConfig(path=digits_npz, resolution=16, channels=3))
    assert d.images.shape[1:] == (3, 16, 16)
    assert torch.equal(d.images[:, 0], d.images[:, 2])


def _folder_cfg(root, **kw):
    return DataConfig(path=str(root), min_per_class=kw.pop("min_per_class", 5), **kw)


def test_image_folder(tmp_path):
    write_image_folder(tmp_path)
    d = load_dataset(_folder_cfg(tmp_path, resolution=8))
    assert d.images.shape == (24, 3, 8, 8)
    assert d.class_names == ["cat", "dog"]
    assert sorted(d.labels.tolist()) == [0] * 12 + [1] * 12
    assert d.images.min() >= -1 and d.images.max() <= 1


def test_image_folder_grayscale_keeps_its_size(tmp_path):
    write_image_folder(tmp_path, mode="L")
    d = load_dataset(_folder_cfg(tmp_path))
    assert d.images.shape[1:] == (1, 10, 10)


def test_npz_layout_of_edm_tooling(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=images, labels=np.repeat(np.arange(3), 10))
    d = load_dataset(DataConfig(path=str(tmp_path / "x.npz"), min_per_class=5))
    assert d.images.shape == (30, 3, 6, 6) and d.class_names == ["0", "1", "2"]
    assert torch.allclose((d.images[0] + 1) / 2 * 255, torch.from_numpy(images[0]).permute(2, 0, 1).float(),
                          atol=1e-3)


# ---- bad input: each a clear error naming the file and the rule -------------------------------

def _validation_error(cfg) -> str:
    with pytest.raises(DataValidationError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "data validation failed" in msg
    return msg


def test_corrupted_png_is_named(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    msg = _validation_error(_folder_cfg(tmp_path))
    assert "every image readable" in msg and "broken.png" in msg


def test_zero_byte_file_is_named(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    msg = _validation_error(_folder_cfg(tmp_path))
    assert "every image readable" in msg and "empty.png" in msg


def test_mixed_sizes_need_resize(tmp_path):
    write_image_folder(tmp_path)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "cat" / "big.png")
    msg = _validation_error(_folder_cfg(tmp_path))
    assert "one image size" in msg and "big.png" in msg
    d = load_dataset(_folder_cfg(tmp_path, resolution=8))      # resizing makes them fit
    assert d.images.shape == (25, 3, 8, 8)


def test_unknown_class_folder(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog", "cta"))
    msg = _validation_error(_folder_cfg(tmp_path, classes=("cat", "dog")))
    assert "labels within the declared classes" in msg and "cta" in msg


@pytest.mark.parametrize("case, rule", [("nan", "no NaN pixels"), ("range", "pixels within 0..255")])
def test_npz_nan_or_out_of_range(tmp_path, case, rule):
    images = np.random.default_rng(0).uniform(0, 255, (30, 6, 6, 1)).astype(np.float32)
    images[4, 0, 0, 0] = np.nan if case == "nan" else 300.0
    np.savez(tmp_path / "x.npz", images=images, labels=np.repeat(np.arange(3), 10))
    msg = _validation_error(DataConfig(path=str(tmp_path / "x.npz"), min_per_class=5))
    assert rule in msg and "x.npz[4]" in msg


@pytest.mark.parametrize("arrays, expected", [
    ({"images": np.zeros((4, 6), np.uint8), "labels": np.zeros(4, np.int64)}, r"'images' has shape \(4, 6\)"),
    ({"images": np.zeros((4, 6, 6, 2), np.uint8), "labels": np.zeros(4, np.int64)}, r"'images' has shape"),
    ({"images": np.zeros((4, 6, 6, 1), np.uint8), "labels": np.zeros((4, 2), np.int64)}, r"'labels' has shape"),
    ({"images": np.zeros((4, 6, 6, 1), np.uint8), "labels": np.zeros(3, np.int64)},
     r"'images' has 4 rows but 'labels' has 3"),
    ({"pixels": np.zeros((4, 6, 6, 1), np.uint8)}, r"missing array 'images'"),
])
def test_npz_wrong_layout(tmp_path, arrays, expected):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=rf"data\.path '.*bad\.npz': {expected}"):
        load_dataset(DataConfig(path=str(tmp_path / "bad.npz")))


def test_empty_folder(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(ConfigError, match=r"data\.path '.*': no images found"):
        load_dataset(DataConfig(path=str(tmp_path)))


def test_missing_path(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path '.*nope': no such file or folder"):
        load_dataset(DataConfig(path=str(tmp_path / "nope")))


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"data\.path '.*x\.npz': cannot read npz"):
        load_dataset(DataConfig(path=str(tmp_path / "x.npz")))


def test_too_few_per_class_and_cross_split_duplicates(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog"), n=12)
    write_image_folder(tmp_path, classes=("emu",), n=3)
    msg = _validation_error(_folder_cfg(tmp_path))
    assert "at least 5 images per class" in msg and "emu" in msg
    dup = tmp_path / "dups"
    write_image_folder(dup, n=12)
    for i in range(12):                                   # every cat is also a dog: duplicates in both splits
        (dup / "dog" / f"{i}.png").write_bytes((dup / "cat" / f"{i}.png").read_bytes())
    msg = _validation_error(_folder_cfg(dup))
    assert "no exact duplicates across train/eval" in msg


def test_data_check_says_whether_data_matches_data_dvc(tmp_path, capsys, monkeypatch):
    from components.data.versioning import main

    materialize_digits(tmp_path / "data" / "digits.npz")
    (tmp_path / "data.dvc").write_text((ROOT / "data.dvc").read_text())
    monkeypatch.chdir(tmp_path)
    main(["data/digits.npz"])
    assert "data/digits.npz: matches data.dvc" in capsys.readouterr().out
    (tmp_path / "data" / "extra.npz").write_text("x")                  # another dataset beside it: no change
    main(["data/digits.npz"])
    assert "matches data.dvc" in capsys.readouterr().out
    with np.load(tmp_path / "data" / "digits.npz") as z:
        images, labels = z["images"].copy(), z["labels"]
    images[0, 0, 0, 0] ^= 1
    write_npz(tmp_path / "data" / "digits.npz", {"images": images, "labels": labels})
    main(["data/digits.npz"])
    assert "differs from data.dvc" in capsys.readouterr().out


def test_each_dataset_is_found_in_its_own_dvc_file_and_adding_one_changes_no_other(tmp_path, monkeypatch):
    """data.dvc names the default dataset; another one gets a .dvc file of its own (what `dvc add` writes),
    so the digits' recorded hash is the same with or without Fashion-MNIST beside them."""
    from components.data.versioning import dvc_tracking

    materialize_digits(tmp_path / "data" / "digits.npz")
    (tmp_path / "data.dvc").write_text((ROOT / "data.dvc").read_text())
    monkeypatch.chdir(tmp_path)
    digits = dvc_tracking("data/digits.npz")
    assert digits == {"dvc_file": "data.dvc", "dvc_path": "data/digits.npz", "dvc_md5": dvc_md5("data/digits.npz")}
    (tmp_path / "data" / "fashion.npz").write_bytes(b"f")
    (tmp_path / "data" / "fashion.npz.dvc").write_text(f"outs:\n- md5: {dvc_md5('data/fashion.npz')}\n"
                                                       "  path: fashion.npz\n")
    assert dvc_tracking("data/fashion.npz")["dvc_file"] == "data/fashion.npz.dvc"
    assert dvc_tracking("data/digits.npz") == digits
    (tmp_path / "images" / "cat").mkdir(parents=True)           # a folder dataset: a file inside it is tracked by it
    (tmp_path / "images.dvc").write_text("outs:\n- md5: abc.dir\n  path: images\n")
    assert dvc_tracking("images/cat/1.png")["dvc_path"] == "images"
    assert dvc_tracking("elsewhere.npz")["dvc_file"] == ""
    (tmp_path / "broken.dvc").write_text("outs: [\n")
    with pytest.raises(ValueError, match="broken.dvc: not a DVC file"):
        dvc_tracking("data/digits.npz")
