"""Fashion-MNIST from IDX files (components/data/fashion_mnist.py) and an npz's own split.

Synthetic IDX files for the format and the bad input; the real files of Debian's package (which
`make test` installs: scripts/fashion_mnist.sh) for the bytes the committed .dvc file records."""
import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.config import ConfigError, DataConfig
from components.data import build_manifest, load_dataset
from components.data.builtin import write_npz
from components.data.fashion_mnist import CLASSES, SOURCE, main, materialize_fashion_mnist
from components.data.versioning import dvc_md5

ROOT = Path(__file__).resolve().parents[2]


def idx(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    """An IDX file: 0, 0, type code, ndim, big-endian uint32 dims, the bytes."""
    head = bytes([0, 0, magic_type, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_source(folder: Path, n_train: int = 30, n_test: int = 10, seed: int = 0, gz: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        for name, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx(arr)
            (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return folder


def test_conversion_keeps_the_official_split_and_the_class_names(tmp_path):
    src = write_source(tmp_path / "src")
    out = materialize_fashion_mnist(tmp_path / "data" / "fm.npz", src)
    with np.load(out, allow_pickle=False) as z:
        assert z["images"].shape == (40, 28, 28, 1) and z["images"].dtype == np.uint8
        assert z["is_eval"].sum() == 10 and z["is_eval"][-10:].all()          # the t10k images, in file order
        assert list(z["class_names"]) == list(CLASSES)
    again = materialize_fashion_mnist(tmp_path / "again.npz", write_source(tmp_path / "raw", gz=False))
    assert dvc_md5(again) == dvc_md5(out)                 # raw or gzipped IDX, the same bytes written
    data = load_dataset(DataConfig(path=str(out), resolution=16, min_per_class=1))
    assert data.shape == (1, 16, 16) and data.class_names == list(CLASSES)
    assert data.is_eval.sum() == 10 and data.is_eval[-10:].all()           # data.split auto: the source's
    seeded = build_manifest(DataConfig(path=str(out), split="seeded", eval_fraction=0.5))
    assert (seeded["split"] == "eval").sum() == 20                         # the seeded split when asked


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(np.zeros((3, 28, 28)), 0x09))),
     r"train-images-idx3-ubyte\.gz': wrong magic number 00000903"),
    (lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx(np.zeros((10, 28, 28)))[:-5])), r"t10k-images-idx3-ubyte\.gz': truncated"),
    (lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(np.zeros(9)))),
     r"t10k-labels-idx1-ubyte\.gz': 9 labels for the 10 images"),
    (lambda d: (d / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip"), r"train-labels-idx1-ubyte\.gz': cannot read"),
    (lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(), r"t10k-labels-idx1-ubyte\(\.gz\)' not found; install Debian"),
])
def test_bad_idx_files_are_one_line_and_write_nothing(tmp_path, capsys, break_it, message):
    src = write_source(tmp_path / "src")
    break_it(src)
    out = tmp_path / "data" / "fashion_mnist.npz"
    assert main(["--src", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_missing_package_says_how_to_install_it(tmp_path, capsys):
    assert main(["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "make fashion-mnist" in err and "dataset-fashion-mnist" in err
    assert not (tmp_path / "out.npz").exists()


def test_an_npz_split_must_be_booleans_and_source_needs_one(tmp_path):
    images, labels = np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 2
    write_npz(tmp_path / "bad.npz", {"images": images, "labels": labels, "is_eval": np.array([0, 1, 0, 1])})
    with pytest.raises(ConfigError, match=r"'is_eval' has shape \(4,\) dtype int64 \(expected 4 booleans\)"):
        build_manifest(DataConfig(path=str(tmp_path / "bad.npz")))
    write_npz(tmp_path / "plain.npz", {"images": images, "labels": labels})
    with pytest.raises(ConfigError, match=r"data\.split 'source': .*plain\.npz' carries no split of its own"):
        build_manifest(DataConfig(path=str(tmp_path / "plain.npz"), split="source"))


def test_the_package_converts_to_the_bytes_the_committed_dvc_file_records(tmp_path):
    """Debian's files -> data/fashion_mnist.npz: the same bytes on every machine (make test installs
    the package; without it this test says so and fails)."""
    assert (SOURCE / "train-images-idx3-ubyte.gz").is_file(), "run scripts/fashion_mnist.sh (make test does)"
    committed = yaml.safe_load((ROOT / "data" / "fashion_mnist.npz.dvc").read_text())["outs"][0]
    out = materialize_fashion_mnist(tmp_path / "fashion_mnist.npz")
    assert dvc_md5(out) == committed["md5"] and out.stat().st_size == committed["size"]
    with np.load(out, allow_pickle=False) as z:
        assert z["images"].shape == (70000, 28, 28, 1) and int(z["is_eval"].sum()) == 10000
        assert np.bincount(z["labels"][~z["is_eval"]]).tolist() == [6000] * 10
