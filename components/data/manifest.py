"""The manifest: one row per image - where it is, its label and split, its size and pixel stats.

Validation runs on it (components/data/validation.py) and the dataset is built from it, so the
split recorded here is the split every stage uses. Stored as CSV with fixed column types.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from components.atomic import atomic_file

# column -> dtype; the order is the CSV's column order
COLUMNS: dict[str, str] = {
    "path": "string",            # file, or 'file.npz[i]'
    "index": "int64",            # row in the source (npz row, or position in the sorted folder listing)
    "label": "int64",            # -1: not a declared class
    "class_name": "string",
    "split": "string",           # 'train' | 'eval' (seeded, stratified by class)
    "readable": "bool",
    "error": "string",           # why it could not be read ('' when readable)
    "height": "int64",           # 0 when unreadable
    "width": "int64",
    "channels": "int64",
    "mode": "string",            # PIL mode of the file, or the npz dtype
    "min": "float64",            # pixel stats on the 0..255 scale (NaN when unreadable)
    "max": "float64",
    "mean": "float64",
    "std": "float64",
    "has_nan": "bool",
    "sha256": "string",          # of the pixel array (dtype, shape, bytes): exact duplicates share it
    "class_count": "int64",      # images of this class in the whole dataset
    "dup_across_split": "bool",  # the same pixels occur in both train and eval
}


def empty_row() -> dict:
    return {"readable": False, "error": "", "height": 0, "width": 0, "channels": 0, "mode": "",
            "min": np.nan, "max": np.nan, "mean": np.nan, "std": np.nan, "has_nan": False, "sha256": ""}


def finish(rows: list[dict], is_eval: np.ndarray) -> pd.DataFrame:
    """Rows (path..sha256) + the split -> the typed manifest with the derived columns."""
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("split", "class_count", "dup_across_split")])
    df["split"] = np.where(is_eval, "eval", "train")
    df["class_count"] = df.groupby("class_name")["path"].transform("size") if len(df) else []
    hashed = df[df["sha256"] != ""]
    splits_per_hash = hashed.groupby("sha256")["split"].nunique()
    df["dup_across_split"] = df["sha256"].map(splits_per_hash).fillna(0).astype(int) > 1
    return df[list(COLUMNS)].astype(COLUMNS)


def save_manifest(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_file(path) as tmp:
        df[list(COLUMNS)].to_csv(tmp, index=False)


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    dtypes = {c: ("string" if t == "string" else t) for c, t in COLUMNS.items() if t != "bool"}
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={c: ["", "NaN", "nan"] for c in
                                                                            ("min", "max", "mean", "std")})
    for c, t in COLUMNS.items():
        if t == "bool":
            df[c] = df[c].map({True: True, False: False, "True": True, "False": False}).astype(bool)
    return df[list(COLUMNS)].astype(COLUMNS)
