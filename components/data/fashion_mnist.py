"""Fashion-MNIST (Xiao et al. 2017, MIT licence) from Debian's `dataset-fashion-mnist` package into
data/ as an npz of the project's layout, byte-for-byte the same on every machine.

The package ships the four IDX files (gzipped) under /usr/share/datasets/fashion-mnist/: 60,000
train and 10,000 test images, 28x28 grayscale, labels 0..9. IDX: a big-endian header - two zero
bytes, a type code (0x08: unsigned byte), the number of dimensions, then each dimension as a
uint32 - followed by the data. The official split is kept: the npz's `is_eval` marks the 10,000
test images, which the manifest uses as the held-out split (never trained on; the FID reference).

    python -m components.data.fashion_mnist [--src /usr/share/datasets/fashion-mnist] [--out data/fashion_mnist.npz]

Bad input - the package missing, a wrong magic number, a truncated file, a label file that does
not match its image file - is one line naming the file and what is wrong, exit 2, and nothing is
written (the npz is written to a temp file and renamed).
"""
from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

from components.config import ConfigError

SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_PATH = Path("data/fashion_mnist.npz")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
INSTALL = "install Debian's dataset-fashion-mnist package: `make fashion-mnist` (or apt-get install -y dataset-fashion-mnist)"
UBYTE = 0x08


def find_idx(src: Path, stem: str) -> Path:
    """<src>/<stem>.gz or <src>/<stem>; ConfigError saying how to get it."""
    for path in (src / f"{stem}.gz", src / stem):
        if path.is_file():
            return path
    if not src.is_dir():
        raise ConfigError(f"Fashion-MNIST: '{src}' does not exist; {INSTALL}")
    raise ConfigError(f"Fashion-MNIST: '{src / stem}(.gz)' not found; {INSTALL}")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions -> uint8 array (ConfigError naming the file)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ConfigError(f"'{path}': cannot read ({type(exc).__name__}: {exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else f"only {len(raw)} bytes"
        raise ConfigError(f"'{path}': wrong magic number {magic} (expected 000008{ndim:02x}: unsigned bytes, "
                          f"{ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"'{path}': truncated header ({len(raw)} bytes, expected {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        what = "truncated" if len(raw) - header < size else "has trailing bytes"
        raise ConfigError(f"'{path}': {what}: {len(raw) - header} data bytes for dimensions {dims} "
                          f"(expected {size})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(src: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N, 28, 28, 1) uint8, labels (N,) int64 of the 'train' or 'test' files, cross-checked."""
    image_file, label_file = (find_idx(src, stem) for stem in FILES[split])
    images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
    if len(images) != len(labels):
        raise ConfigError(f"'{label_file}': {len(labels)} labels for the {len(images)} images of '{image_file}'")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise ConfigError(f"'{label_file}': label {int(labels.max())} outside 0..{len(CLASSES) - 1}")
    return images[..., None], labels.astype(np.int64)


def fashion_mnist_arrays(src: Path = SOURCE) -> dict[str, np.ndarray]:
    """The npz's arrays: images (70000, 28, 28, 1) uint8, labels (70000,), is_eval (the 10,000 test
    images), class_names."""
    train_x, train_y = read_split(src, "train")
    test_x, test_y = read_split(src, "test")
    return {"images": np.concatenate([train_x, test_x]), "labels": np.concatenate([train_y, test_y]),
            "is_eval": np.concatenate([np.zeros(len(train_y), bool), np.ones(len(test_y), bool)]),
            "class_names": np.array(CLASSES)}


def materialize_fashion_mnist(out: str | Path = DEFAULT_PATH, src: str | Path = SOURCE) -> Path:
    from components.data.builtin import write_npz

    write_npz(out, fashion_mnist_arrays(Path(src)))       # every check passes before anything is written
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write Fashion-MNIST (Debian's package) as data/fashion_mnist.npz.")
    ap.add_argument("--src", default=str(SOURCE), help="folder of the four IDX files (default: %(default)s)")
    ap.add_argument("--out", default=str(DEFAULT_PATH), help="target .npz (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        out = materialize_fashion_mnist(args.out, args.src)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
