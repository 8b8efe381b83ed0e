"""Write-to-temp-then-rename: a file or folder is either the old one, the complete new one, or absent.

Every writer of the project goes through here (models, checkpoints, shards, datasets, reports,
JSON figures), so a crash or a kill mid-write never leaves a half-written output behind. The temp
path sits beside the target (same filesystem, so `os.replace` is atomic) and is hidden (`.name.`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk; a filesystem that cannot (some network mounts) is let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on failure it is removed.
    `durable`: fsync the file before the rename (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())              # mkstemp makes 0600; an ordinary file is wanted
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces `path` (the old folder is
    moved aside first, then deleted), on failure it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        if durable:
            for p in [*tmp.rglob("*"), tmp]:
                _fsync(p)
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> Path:
    """JSON (indent 1, sorted keys unless told otherwise) plus a newline, atomically."""
    kwargs = {"indent": 1, "sort_keys": True, **kwargs}
    return write_text(path, json.dumps(obj, **kwargs) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["atomic_dir", "atomic_file", "write_bytes", "write_json", "write_text"]
