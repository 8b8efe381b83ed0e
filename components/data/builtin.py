"""The built-in digits, materialised into data/ as an .npz, byte-for-byte the same on every machine.

scikit-learn bundles 1,797 real 8x8 handwritten digits (pixel values 0..16), so nothing is
downloaded. They are written in the EDM/DMD2 npz layout - `images` (N, H, W, C) uint8 and
`labels` (N,) - with 0..16 mapped to round(v * 255 / 16). np.savez stamps the current time into
its zip entries, so the file is written here with fixed timestamps and no compression: the same
bytes everywhere, hence the same DVC hash as the committed data.dvc.

    python -m components.data.builtin [--out data/digits.npz]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from components.atomic import atomic_file

DEFAULT_PATH = Path("data/digits.npz")
DIGIT_CLASSES = tuple(str(c) for c in range(10))
_EPOCH = (1980, 1, 1, 0, 0, 0)              # the earliest time a zip entry can carry


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """-> images (1797, 8, 8, 1) uint8, labels (1797,) int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, d.target.astype(np.int64)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """A deterministic .npz (what np.load reads), written to a temp file then renamed."""
    with atomic_file(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def materialize_digits(path: str | os.PathLike = DEFAULT_PATH) -> Path:
    images, labels = digits_arrays()
    write_npz(path, {"images": images, "labels": labels})
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the built-in digits as data/digits.npz (deterministic).")
    ap.add_argument("--out", default=str(DEFAULT_PATH), help="target .npz (default: %(default)s)")
    args = ap.parse_args(argv)
    out = materialize_digits(args.out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
