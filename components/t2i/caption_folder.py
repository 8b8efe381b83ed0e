"""Ingest a user's caption folder: images plus a root `metadata.jsonl` (Hugging Face's imagefolder
convention), checked by a Great Expectations suite before any pixel is loaded.

Each metadata line is a JSON object with `file_name` (a path relative to the folder) and `text`
(its caption), optionally `split` ("train" / "eval"). `caption_manifest` turns the folder into one
row per metadata line plus one row per image no line names, so validation can list every bad line
and file at once; `validate_caption_folder` runs one expectation per rule over it, reusing
components/data/validation.py's suite runner and report. Problems that leave nothing to list (no
folder, no metadata.jsonl, a line that is not a JSON object with a file_name) are a one-line
ConfigError naming `metadata.jsonl:<line>`. `load_caption_folder` validates, then builds a
CaptionDataset (RGB, square, [-1, 1]) in metadata line order.

GX is imported lazily (validation._gx()): importing it takes seconds.
"""
from __future__ import annotations

import json
import posixpath
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.config import ConfigError
from components.data.dataset import stratified_split
from components.data.sources import IMAGE_SUFFIXES, read_image
from components.data.validation import (
    DataValidationError,
    DataValidationReport,
    _Check,
    _gx,
    _Manifest,
    _outcome,
    _run_suite,
    _unexpected_rows,
)
from components.t2i.captions import CaptionDataset

METADATA = "metadata.jsonl"
EXPECTED = f"{METADATA} at its root, one JSON object per line with 'file_name' and 'text'"
SPLITS = ("train", "eval")
_GX_COLUMNS = ("file_name", "line", "caption_ok", "readable", "has_caption")
COLUMNS = ("file_name", "text", "path", "exists", "readable", "caption_ok", "has_caption", "height", "width",
           "channels", "line", "split", "error")


def caption_manifest(folder: str | Path) -> pd.DataFrame:
    """One row per metadata line (in line order), then one per image file no line names (sorted).

    Columns: file_name (normalised, relative to the folder), text (None where missing), path,
    exists, readable, caption_ok (a non-empty, valid UTF-8 string), has_caption (a line names the
    file), height, width, channels (0 when unreadable), line (1-based; 0: no line), split (the
    line's own, else None) and error (why the file is unreadable, else "")."""
    folder = Path(folder)
    lines = _read_metadata(_metadata_path(folder))
    named = {rec["file_name"] for rec in lines}
    rows = [_row(folder, rec) for rec in lines]
    rows += [_row(folder, {"file_name": name, "text": None, "line": 0, "split": None})
             for name in _image_files(folder) if name not in named]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("text", "split"):       # the constructor turns None into NaN next to strings
        df[col] = pd.Series([r[col] for r in rows], index=df.index, dtype=object)
    return df


def validate_caption_folder(folder: str | Path, max_offending: int = 5) -> DataValidationReport:
    """Run the caption-folder suite through Great Expectations and report each rule's outcome."""
    return _validate(caption_manifest(folder), max_offending)


def load_caption_folder(folder: str | Path, resolution: int = 32, eval_fraction: float = 0.1,
                        seed: int = 0) -> CaptionDataset:
    """Scan, validate (DataValidationError naming the offending lines/files) and load the folder."""
    folder = Path(folder)
    _check_arguments(resolution, eval_fraction)
    manifest = caption_manifest(folder)
    report = _validate(manifest, 5)
    if not report.success:
        raise DataValidationError(report.error_message(source=str(folder)))
    images = torch.from_numpy(np.stack([_square_rgb(Path(p), resolution) for p in manifest["path"]]))
    images = (images.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()
    is_eval = torch.from_numpy(_eval_mask(manifest["split"].tolist(), eval_fraction, seed))
    return CaptionDataset(images, [str(t) for t in manifest["text"]], is_eval, source=str(folder),
                          meta={"format": "caption-folder", "metadata": METADATA, "resolution": int(resolution)})


# --- reading the folder ---------------------------------------------------------------------------

def _metadata_path(folder: Path) -> Path:
    """folder/metadata.jsonl, or a ConfigError saying which of the two is missing."""
    if not folder.is_dir():
        raise ConfigError(f"caption folder '{folder}': no such folder (expected a folder of images with {EXPECTED})")
    path = folder / METADATA
    if not path.is_file():
        raise ConfigError(f"caption folder '{folder}': no {METADATA} (expected {EXPECTED})")
    return path


def _read_metadata(path: Path) -> list[dict]:
    """The non-blank lines of metadata.jsonl as {file_name, text, line, split} records.

    Bytes are decoded per line so a bad byte is pinned to its line. A caption with bytes that are not
    UTF-8 is kept (as surrogate escapes) and fails the caption rule, so every such line is listed;
    anything that leaves no usable file_name is a ConfigError naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc}); expected {EXPECTED}") from None
    records = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            records.append(_parse_line(path, n, raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw))
    return records


def _parse_line(path: Path, n: int, raw: bytes) -> dict:
    """One metadata line -> its record (ConfigError naming path:n when it is not usable)."""
    where = f"{path}:{n}"
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="surrogateescape")   # the caption rule reports it below
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected one JSON object "
                          "per line with 'file_name' and 'text'") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: a JSON {type(obj).__name__}; expected an object with 'file_name' and 'text'")
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"{where}: split {split!r}; expected 'train' or 'eval' (or no split key)")
    return {"file_name": _file_name(where, obj.get("file_name")), "text": obj.get("text"), "line": n,
            "split": split}


def _file_name(where: str, name) -> str:
    """A line's file_name, normalised ('./a.png' == 'a.png') so duplicates and disk files match."""
    if not isinstance(name, str) or not name.strip():
        got = "no 'file_name'" if name is None else f"'file_name' {name!r}"
        raise ConfigError(f"{where}: {got}; expected 'file_name': an image path relative to the folder")
    if not _utf8(name):
        raise ConfigError(f"{where}: 'file_name' is not valid UTF-8; expected an image path relative to the folder")
    norm = posixpath.normpath(name)
    # The folder is the whole dataset: a line must not reach files outside it.
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise ConfigError(f"{where}: 'file_name' {name!r} is outside the folder; expected a path relative to it")
    return norm


def _image_files(folder: Path) -> list[str]:
    """PNG/JPEG files under the folder (any depth, hidden ones skipped), as sorted relative posix paths."""
    names = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(s.startswith(".") for s in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def _row(folder: Path, rec: dict) -> dict:
    """The manifest row of one record: the file read once, so bad files are found before loading."""
    path = folder / rec["file_name"]
    text = rec["text"]
    row = {**rec, "path": str(path), "exists": path.is_file(), "readable": False, "height": 0, "width": 0,
           "channels": 0, "error": "", "has_caption": rec["line"] > 0,
           "caption_ok": isinstance(text, str) and bool(text.strip()) and _utf8(text)}
    if not row["exists"]:
        row["error"] = "a folder, not a file" if path.is_dir() else "no such file"
        return row
    try:
        arr, _ = read_image(path)
    except Exception as exc:  # noqa: BLE001 - any decoder failure makes the row unreadable
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
        return row
    row.update(readable=True, height=int(arr.shape[0]), width=int(arr.shape[1]), channels=int(arr.shape[2]))
    return row


def _utf8(s: str) -> bool:
    """Whether the string encodes as UTF-8: false for surrogate escapes of undecodable bytes."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- validation -----------------------------------------------------------------------------------

def _validate(manifest: pd.DataFrame, max_offending: int) -> DataValidationReport:
    """The suite over a caption manifest; offending entries read 'a.png (metadata.jsonl:3)'."""
    gx = _gx()
    df = manifest.reset_index(drop=True)
    n = max(int(max_offending), 0)
    # _Manifest.paths is what the shared readers name for an offending row: here, file and line
    # (and, for the file rule, why the file is unusable).
    m = _Manifest(df, pd.Series([_label(r) for r in df.itertuples()], dtype=object), [], n)
    m_why = _Manifest(df, pd.Series([_label(r, r.error) for r in df.itertuples()], dtype=object), [], n)
    checks = _checks(gx.expectations, m_why) if len(df) else [_at_least_one_image_check(gx.expectations)]
    # GX fingerprints every cell it is given; `text` may hold non-strings or undecodable bytes, so
    # it gets only the columns the rules read (the booleans stand for the caption).
    results = _run_suite(gx, checks, df[list(_GX_COLUMNS)])
    outcomes = [_outcome(check, results.get(i), m) for i, check in enumerate(checks)]
    return DataValidationReport(success=all(o.success for o in outcomes), outcomes=outcomes,
                                num_rows=int(len(df)), gx_version=str(gx.__version__))


def _label(r, why: str = "") -> str:
    """How the report names a row: its file, then its metadata line and `why` where there are."""
    notes = ([f"{METADATA}:{r.line}"] if r.line else []) + ([why] if why else [])
    return f"{r.file_name} ({', '.join(notes)})" if notes else r.file_name


def _checks(expect, m_why: _Manifest) -> list[_Check]:
    """Every check of a non-empty caption manifest, in report order (`expect` is gx.expectations)."""
    from great_expectations.expectations.row_conditions import Column

    named = Column("line") > 0          # the caption and file rules are about metadata lines only
    return [
        _Check("every caption a non-empty UTF-8 string",
               expect.ExpectColumnValuesToBeInSet(column="caption_ok", value_set=[True], row_condition=named),
               "caption_ok"),
        _Check("every named file present and readable",
               expect.ExpectColumnValuesToBeInSet(column="readable", value_set=[True], row_condition=named),
               "readable", partial(_unexpected_rows, m_why)),
        _Check("no image without a caption",
               expect.ExpectColumnValuesToBeInSet(column="has_caption", value_set=[True]), "has_caption"),
        _Check("no duplicate file_name", expect.ExpectColumnValuesToBeUnique(column="file_name"), "file_name"),
    ]


def _at_least_one_image_check(expect) -> _Check:
    """The only check of an empty folder: at least one row (a metadata line or an image)."""
    return _Check("at least one image", expect.ExpectTableRowCountToBeBetween(min_value=1), "",
                  lambda _res: (0, [f"no images and no lines in {METADATA}"], "row"))


# --- loading --------------------------------------------------------------------------------------

def _check_arguments(resolution: int, eval_fraction: float) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ConfigError(f"caption folder resolution {resolution!r}: expected a positive integer")
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"caption folder eval_fraction {eval_fraction!r}: expected a number in (0, 1)")


def _square_rgb(path: Path, resolution: int) -> np.ndarray:
    """(R, R, 3) uint8: RGB, centre-cropped to a square, resized with PIL's bicubic filter."""
    from PIL import Image

    arr, _ = read_image(path)                       # grey modes as 'L', the rest as RGB
    im = Image.fromarray(np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr)
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _eval_mask(splits: list, eval_fraction: float, seed: int) -> np.ndarray:
    """A line's own split where it has one; the lines without one get a seeded eval_fraction split."""
    is_eval = np.array([s == "eval" for s in splits], dtype=bool)
    free = np.flatnonzero([s is None for s in splits])
    if len(free):
        is_eval[free] = stratified_split(np.zeros(len(free), dtype=np.int64), eval_fraction, seed)
    return is_eval


__all__ = ["caption_manifest", "validate_caption_folder", "load_caption_folder"]
