"""Training checkpoints as safetensors + JSON, written atomically, for an exact resume.

A checkpoint is one folder ``<directory>/step-XXXXXXXX/`` (the step, zero-padded to 8 digits)
holding two files:

* ``state.safetensors`` - every tensor of the nested training state (model / EMA / optimizer
  state dicts, ``torch.Generator.get_state()``, ``torch.get_rng_state()``, ...), stored under the
  dotted path where it sits in the state (e.g. ``optimizer.state.0.exp_avg``), made contiguous,
  detached, moved to the CPU and cloned where it shares storage with another tensor (safetensors
  refuses shared storage). Any dtype safetensors knows is kept (uint8 RNG states included).
* ``state.json`` - ``{"format": "fewstep-checkpoint", "version": 1, "step": N, "meta": {...},
  "state": {...}, "tensors": [...]}``: the nested structure with every tensor replaced by
  ``{"__tensor__": "<key in state.safetensors>"}``. Plain JSON carries str-keyed dicts, lists, str,
  bool, int, finite float and None; everything else is tagged so that it comes back as it went in:
  ``{"__float__": "nan" | "inf" | "-inf"}``, ``{"__tuple__": [...]}`` and
  ``{"__dict__": [[key, value], ...]}`` for dicts with int keys (``optimizer.state_dict()["state"]``)
  or str keys starting with ``__``. ``meta`` (run config, teacher hash, ...) uses the same encoding
  but may not hold tensors.

No pickle is ever written or read (no ``torch.save`` / ``torch.load``). `save_checkpoint` writes into
``<directory>/.step-XXXXXXXX.<random>.tmp/`` and renames it into place (components/atomic.py), so a crash mid-write
never leaves a half-written ``step-*`` folder; it then prunes older checkpoints beyond the newest
``keep``. `latest_checkpoint` ignores tmp folders and ``step-*`` folders missing either file.

`config_diff` / `describe_diff` compare the run config saved in ``meta`` with the current one, so a
resume with changed settings can be refused with a one-line error.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from components.atomic import atomic_dir
from components.config import ConfigError

FORMAT = "fewstep-checkpoint"
VERSION = 1
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_EXPECTED = "expected a folder with state.safetensors and state.json written by save_checkpoint"
_TAGS = ("__tensor__", "__float__", "__tuple__", "__dict__")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------- encode
class _Encoder:
    """Turns the nested state into JSON, collecting tensors under unique dotted keys."""

    def __init__(self, allow_tensors: bool, what: str):
        self.allow_tensors = allow_tensors
        self.what = what
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[tuple[str, int]] = set()

    def _fail(self, path: str, expected: str) -> ConfigError:
        return ConfigError(f"checkpoint {self.what} field '{path or '<root>'}': {expected}")

    def _tensor(self, t: torch.Tensor, path: str) -> dict:
        if not self.allow_tensors:
            raise self._fail(path, "a tensor is not allowed here (expected JSON-able values)")
        if t.is_sparse or t.layout != torch.strided:
            raise self._fail(path, f"{t.layout} tensors are not supported (expected a dense tensor)")
        t = t.detach().to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()                       # a fresh copy: its storage is its own
        elif t.numel() > 0:
            ident = (str(t.device), t.untyped_storage().data_ptr())
            if ident in self._storages or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()                        # shared / partial storage: safetensors refuses it
            else:
                self._storages.add(ident)
        key, n = path or "tensor", 1
        while key in self.tensors:
            n += 1
            key = f"{path or 'tensor'}#{n}"
        self.tensors[key] = t
        return {"__tensor__": key}

    def encode(self, value: Any, path: str = "") -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value, path)
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if math.isnan(value):
                return {"__float__": "nan"}
            if math.isinf(value):
                return {"__float__": "inf" if value > 0 else "-inf"}
            return float(value)
        if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            return self.encode(value.item(), path)   # numpy scalars -> python scalars
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
            return {"__tuple__": items} if isinstance(value, tuple) else items
        if isinstance(value, dict):
            for k in value:
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise self._fail(path, f"dict key {k!r} of type {type(k).__name__} (expected str or int keys)")
            encoded = [(k, self.encode(v, f"{path}.{k}" if path else str(k))) for k, v in value.items()]
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return dict(encoded)
            return {"__dict__": [[k, v] for k, v in encoded]}
        raise self._fail(path, f"unsupported type {type(value).__name__} (expected a tensor, dict, list, tuple, "
                               "bool, int, float, str or None)")


# ----------------------------------------------------------------------------------------- decode
def _decode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    tag = next((t for t in _TAGS if t in value), None)
    if tag is None:
        return {k: _decode(v, tensors, where) for k, v in value.items()}
    if len(value) != 1:
        raise ConfigError(f"{where}: malformed entry {_one_line(json.dumps(value))[:80]} ({_EXPECTED})")
    body = value[tag]
    if tag == "__tensor__":
        if body not in tensors:
            raise ConfigError(f"{where}: state.safetensors lacks tensor '{body}' ({_EXPECTED})")
        return tensors[body]
    if tag == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise ConfigError(f"{where}: bad float tag {body!r} ({_EXPECTED})")
        return float(body)
    if tag == "__tuple__" and isinstance(body, list):
        return tuple(_decode(v, tensors, where) for v in body)
    if tag == "__dict__" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
        return {k: _decode(v, tensors, where) for k, v in body}
    raise ConfigError(f"{where}: malformed {tag} entry ({_EXPECTED})")


# -------------------------------------------------------------------------------------- save/load
def _step_of(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m and path.is_dir() else None


def _complete(path: Path) -> bool:
    return (path / STATE_JSON).is_file() and (path / STATE_TENSORS).is_file()


def save_checkpoint(directory: str | os.PathLike, step: int, state: dict, meta: dict, keep: int = 2) -> Path:
    """Write ``directory/step-{step:08d}/`` (state.safetensors + state.json) atomically; keep the newest
    `keep` checkpoints (the one just written always stays). Returns the folder."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"checkpoint step {step!r}: expected an integer >= 0")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"checkpoint keep {keep!r}: expected an integer >= 1")
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint state: got {type(state).__name__} (expected a dict)")
    if not isinstance(meta, dict):
        raise ConfigError(f"checkpoint meta: got {type(meta).__name__} (expected a JSON-able dict)")
    enc = _Encoder(allow_tensors=True, what="state")
    doc = {"format": FORMAT, "version": VERSION, "step": step,
           "meta": _Encoder(allow_tensors=False, what="meta").encode(meta),
           "state": enc.encode(state), "tensors": sorted(enc.tensors)}
    text = json.dumps(doc, indent=1, allow_nan=False, sort_keys=True) + "\n"   # the same bytes on every rerun

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = directory / name
    with atomic_dir(final, durable=True) as tmp:     # re-saving a step replaces the old folder whole
        # one metadata key: safetensors writes several in a random order (a Rust HashMap), so the same state would
        # hash differently on every save; the step is in state.json and the folder name
        save_file(enc.tensors, str(tmp / STATE_TENSORS), metadata={"format": FORMAT})
        (tmp / STATE_JSON).write_text(text)

    done = sorted((s, p) for p in directory.iterdir() if (s := _step_of(p)) is not None and _complete(p))
    for s, p in done[:-keep]:
        if p != final:
            shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete ``step-*`` folder with the highest step, or None (tmp / incomplete folders are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    done = [(s, p) for p in directory.iterdir() if (s := _step_of(p)) is not None and _complete(p)]
    return max(done)[1] if done else None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state, meta) of a checkpoint folder; tensors come back on the CPU. Errors are one-line ConfigErrors."""
    path = Path(path)
    where = f"checkpoint '{path}'"
    if not path.is_dir():
        raise ConfigError(f"{where}: folder not found ({_EXPECTED})")
    for f in (STATE_JSON, STATE_TENSORS):
        if not (path / f).is_file():
            raise ConfigError(f"{where}: missing {f} ({_EXPECTED})")
    try:
        doc = json.loads((path / STATE_JSON).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{where}: state.json is not readable JSON: {_one_line(e)} ({_EXPECTED})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise ConfigError(f"{where}: state.json is not a {FORMAT} file ({_EXPECTED})")
    if doc.get("version") != VERSION:
        raise ConfigError(f"{where}: state.json has format version {doc.get('version')!r} "
                          f"(expected version {VERSION}, written by save_checkpoint)")
    try:
        tensors = load_file(str(path / STATE_TENSORS), device="cpu")
    except Exception as e:  # safetensors raises its own error types for bad headers / truncated files
        raise ConfigError(f"{where}: state.safetensors is not readable: {_one_line(e)} ({_EXPECTED})") from None
    missing = [k for k in doc.get("tensors", []) if k not in tensors]
    if missing:
        raise ConfigError(f"{where}: state.safetensors lacks tensor '{missing[0]}'"
                          f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} ({_EXPECTED})")
    state = _decode(doc["state"], tensors, where)
    meta = _decode(doc.get("meta", {}), {}, where)
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise ConfigError(f"{where}: state.json state/meta are not objects ({_EXPECTED})")
    return state, meta


# ---------------------------------------------------------------------------------------- configs
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or (not d and prefix):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    return v


def _same(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def config_diff(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Sorted dotted keys (e.g. ``distill.lr_gen``) whose values differ between two nested JSON-like
    dicts; a key present on one side only differs. Lists and tuples compare equal element-wise.
    `ignore` holds dotted keys or dotted prefixes (``"tracking"`` skips ``tracking.*``)."""
    fs, fc = _flatten(saved), _flatten(current)
    ignored = tuple(ignore)

    def skip(key: str) -> bool:
        return any(key == i or key.startswith(i + ".") for i in ignored)

    return sorted(k for k in set(fs) | set(fc)
                  if not skip(k) and (k not in fs or k not in fc or not _same(fs[k], fc[k])))


def _show(flat: dict[str, Any], key: str) -> str:
    if key not in flat:
        return "absent"
    v = _norm(flat[key])
    try:
        text = json.dumps(v) if isinstance(v, (str, list, dict)) or v is None else repr(v)
    except (TypeError, ValueError):
        text = repr(v)
    text = _one_line(text)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_diff(saved: dict, current: dict, keys: list[str] | tuple[str, ...]) -> str:
    """One line for error messages: ``distill.lr_gen (checkpoint 0.0002, run 0.0001), ...``."""
    fs, fc = _flatten(saved), _flatten(current)
    return ", ".join(f"{k} (checkpoint {_show(fs, k)}, run {_show(fc, k)})" for k in keys)
