"""Teacher noise -> image pairs from the teacher's deterministic ODE sampler.

DMD (v1, Yin et al. 2024, arXiv 2311.18828, Sec. 3.3) regularises the one-step generator with a
regression loss towards pairs (z, x) where x is the teacher's deterministic probability-flow ODE
solution (here: the teacher's own Heun recipe) started from the noise z; the same pairs give the
one-step ODE-regression warm start. The pairs are costly, so they are cached on disk and the cache
is keyed by what decides them: the teacher's weights hash, its sampler recipe and the pair count,
shard size and seed (the sampling batch size does not change the deterministic sampler's result).

Folder format (safetensors only, never pickle):
  shard-00000.safetensors, shard-00001.safetensors, ...
      tensors: noise (n, C, H, W) float32 standard normal z, labels (n,) int64,
               images (n, C, H, W) float32 teacher output in [-1, 1]
      metadata (strings): key, index, num_shards, start, rows
  pairs.json: {format, key, teacher_sha256, sampler, config, num_pairs, shards: [{file, start, rows}]}
Shard i holds pairs [i * shard_size, min(N, (i + 1) * shard_size)); its noise comes from a generator
seeded from (seed, i) only, so shards are independent and a crashed run resumes shard by shard.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from components.atomic import atomic_file, write_text
from components.config import ConfigError, PairsConfig

FORMAT = 1
MANIFEST = "pairs.json"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
TENSORS = ("noise", "labels", "images")
# a shard's own metadata (key, index, start, rows ...) as one sorted-JSON value: safetensors writes several metadata
# keys in a random order (a Rust HashMap), which gave the same pairs another md5 on every run (dvc.lock's hash)
SHARD_META = "fewstep_pairs"
DETERMINISTIC_SAMPLERS = ("heun",)   # samplers that draw no noise: batching cannot change their output
_SEED_STRIDE = 1_000_003


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def shard_seed(seed: int, index: int) -> int:
    """The noise seed of shard `index`: a function of (seed, index) only."""
    return (int(seed) * _SEED_STRIDE + int(index)) % (2**63)


@dataclass
class TeacherPairs:
    noise: torch.Tensor        # (N, C, H, W) float32 standard-normal z (before scaling by sigma_max)
    labels: torch.Tensor       # (N,) int64
    images: torch.Tensor       # (N, C, H, W) float32 teacher output for (noise, label), in [-1, 1]
    teacher_sha256: str
    sampler: dict              # the teacher's recipe {'sampler': ..., 'sigmas': [...]} that made them
    config: Optional[dict] = field(default=None)  # the PairsConfig dict they were made with (if known)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def check_teacher(self, teacher_sha256: str, what: str) -> None:
        """ConfigError when these pairs were made by another teacher than this run's."""
        if teacher_sha256 != self.teacher_sha256:
            raise ConfigError(f"{what}: pairs were made by teacher sha256 {self.teacher_sha256[:12]}..., "
                              f"this run's teacher is {teacher_sha256[:12]}...; regenerate the pairs")


def _cfg_dict(cfg: PairsConfig | dict) -> dict:
    return dict(cfg.model_dump() if hasattr(cfg, "model_dump") else cfg)


def _canonical_sampler(sampler: dict) -> dict:
    return json.loads(json.dumps(sampler, sort_keys=True))


def pairs_key(teacher_sha256: str, sampler: dict, cfg: PairsConfig | dict) -> str:
    """sha256 of the canonical JSON of what decides the pairs (the cache key).

    batch_size is left out for the deterministic samplers (it cannot change their output)."""
    c = _cfg_dict(cfg)
    payload: dict[str, Any] = {"format": FORMAT, "teacher_sha256": teacher_sha256,
                               "sampler": _canonical_sampler(sampler),
                               "num_pairs": c.get("num_pairs"), "shard_size": c.get("shard_size"),
                               "seed": c.get("seed")}
    if sampler.get("sampler") not in DETERMINISTIC_SAMPLERS:
        payload["batch_size"] = c.get("batch_size")
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _shard_ranges(num_pairs: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(num_pairs, s + shard_size)) for s in range(0, num_pairs, shard_size)]


def _write_shard(path: Path, noise, labels, images, meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({"noise": noise.detach().to("cpu", torch.float32).contiguous(),
                   "labels": labels.detach().to("cpu", torch.int64).contiguous(),
                   "images": images.detach().to("cpu", torch.float32).contiguous()},
                  str(tmp), metadata={SHARD_META: json.dumps({k: str(v) for k, v in meta.items()}, sort_keys=True)})


def _unpack_meta(metadata: Optional[dict]) -> dict:
    """A shard's metadata (what _write_shard packed into one key; {} for a shard of another format)."""
    try:
        return dict(json.loads((metadata or {}).get(SHARD_META, "{}")))
    except (ValueError, TypeError):
        return {}


def _shard_meta(path: Path) -> Optional[dict]:
    """The shard's safetensors metadata and row counts, or None when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = _unpack_meta(f.metadata())
            keys = set(f.keys())
            rows = {k: f.get_slice(k).get_shape()[0] for k in TENSORS if k in keys}
    except Exception:  # noqa: BLE001 - any unreadable file is "not a valid shard"
        return None
    meta["_rows"] = rows
    return meta


def _shard_is_done(path: Path, key: str, index: int, num_shards: int, start: int, rows: int) -> bool:
    if not path.is_file():
        return False
    meta = _shard_meta(path)
    if meta is None:
        return False
    return (meta.get("key") == key and meta.get("index") == str(index)
            and meta.get("num_shards") == str(num_shards) and meta.get("start") == str(start)
            and meta.get("rows") == str(rows) and meta["_rows"] == {k: rows for k in TENSORS})


def _remove_stale(directory: Path, num_shards: int) -> None:
    for p in directory.iterdir():
        m = SHARD_RE.match(p.name)
        if (m and int(m.group(1)) >= num_shards) or (p.name.startswith(".shard-") and p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)


def _write_manifest(directory: Path, key: str, teacher_sha256: str, sampler: dict, cfg: dict,
                    ranges: list[tuple[int, int]]) -> None:
    manifest = {"format": FORMAT, "key": key, "teacher_sha256": teacher_sha256,
                "sampler": _canonical_sampler(sampler), "config": cfg, "num_pairs": ranges[-1][1] if ranges else 0,
                "shards": [{"file": shard_name(i), "start": s, "rows": e - s} for i, (s, e) in enumerate(ranges)]}
    write_text(directory / MANIFEST, json.dumps(manifest, indent=1))


def _image_shape(teacher) -> tuple[int, int, int]:
    c = teacher.unet.config
    size = c.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(c.in_channels), int(h), int(w)


def generate_pairs(teacher, cfg: PairsConfig, out_dir: str | Path, progress: bool = True,
                   teacher_sha256: Optional[str] = None) -> TeacherPairs:
    """Sample cfg.num_pairs teacher pairs into out_dir shard by shard (resumable) and load them.

    A shard already on disk with this run's key and the right rows is kept; any other shard file
    (another teacher, recipe, size or seed; truncated) is regenerated; stale extra shards are removed."""
    from tqdm.auto import tqdm

    from components.diffusion.denoiser import state_hash
    from components.diffusion.generate import balanced_labels, sample_batch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_sha256 = teacher_sha256 or state_hash(teacher)
    sampler = _canonical_sampler(teacher.sampling)
    cfg_d = _cfg_dict(cfg)
    key = pairs_key(teacher_sha256, sampler, cfg_d)
    n, bs = int(cfg_d["num_pairs"]), int(cfg_d["batch_size"])
    ranges = _shard_ranges(n, int(cfg_d["shard_size"]))
    labels_all = balanced_labels(n, teacher.num_classes).to(torch.int64)
    shape = _image_shape(teacher)

    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad(), tqdm(total=n, desc="teacher pairs", unit="pair", disable=not progress,
                                   mininterval=2) as bar:
            for i, (start, end) in enumerate(ranges):
                path = out_dir / shard_name(i)
                if _shard_is_done(path, key, i, len(ranges), start, end - start):
                    bar.update(end - start)
                    continue
                g = torch.Generator().manual_seed(shard_seed(cfg_d["seed"], i))
                noise = torch.randn((end - start, *shape), generator=g)
                labels = labels_all[start:end]
                images = []
                for b in range(0, end - start, bs):
                    images.append(sample_batch(teacher, noise[b:b + bs], labels[b:b + bs], g).float())
                    bar.update(len(images[-1]))
                _write_shard(path, noise, labels, torch.cat(images),
                             {"key": key, "index": i, "num_shards": len(ranges), "start": start,
                              "rows": end - start})
    finally:
        teacher.train(was_training)
    _remove_stale(out_dir, len(ranges))
    _write_manifest(out_dir, key, teacher_sha256, sampler, cfg_d, ranges)
    return load_pairs(out_dir, teacher_sha256)


def write_pairs(pairs: TeacherPairs, directory: str | Path, cfg_dict: PairsConfig | dict | None = None) -> str:
    """Write in-memory pairs in generate_pairs' format (e.g. for a materializer); -> the key.

    cfg_dict defaults to pairs.config; without either the pairs go into one shard."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = len(pairs)
    cfg = _cfg_dict(cfg_dict) if cfg_dict is not None else dict(pairs.config or {})
    cfg.setdefault("num_pairs", n)
    cfg.setdefault("shard_size", max(n, 1))
    cfg.setdefault("seed", None)
    if int(cfg["num_pairs"]) != n:
        raise ValueError(f"write_pairs: config num_pairs={cfg['num_pairs']} but the pairs hold {n}")
    key = pairs_key(pairs.teacher_sha256, pairs.sampler, cfg)
    ranges = _shard_ranges(n, int(cfg["shard_size"]))
    for i, (s, e) in enumerate(ranges):
        _write_shard(directory / shard_name(i), pairs.noise[s:e], pairs.labels[s:e], pairs.images[s:e],
                     {"key": key, "index": i, "num_shards": len(ranges), "start": s, "rows": e - s})
    _remove_stale(directory, len(ranges))
    _write_manifest(directory, key, pairs.teacher_sha256, pairs.sampler, cfg, ranges)
    return key


save_pairs = write_pairs


def load_pairs(directory: str | Path, teacher_sha256: Optional[str] = None,
               what: Optional[str] = None) -> TeacherPairs:
    """Read a folder written by generate_pairs / write_pairs, checking every shard against the
    manifest's key; with teacher_sha256, also that this run's teacher made them."""
    from safetensors import safe_open

    directory = Path(directory)
    label = what or "pairs"
    expect = f"expected teacher pairs written by generate_pairs: {MANIFEST} + shard-*.safetensors"
    if not directory.is_dir():
        raise ConfigError(f"{label} '{directory}': no such folder ({expect})")
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ConfigError(f"{label} '{mpath}': missing ({expect})")
    try:
        manifest = json.loads(mpath.read_text())
        key, shards, num_pairs = manifest["key"], manifest["shards"], int(manifest["num_pairs"])
        made_by, sampler = manifest["teacher_sha256"], manifest["sampler"]
        if not isinstance(shards, list) or not all(isinstance(e, dict) for e in shards):
            raise TypeError("shards is not a list of objects")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{label} '{mpath}': unreadable manifest ({type(e).__name__}: {e}); {expect}") from None
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in TENSORS}
    total = 0
    for i, entry in enumerate(shards):
        path = directory / shard_name(i)
        rows = int(entry.get("rows", -1))
        if entry.get("file") != path.name or int(entry.get("start", -1)) != total:
            raise ConfigError(f"{label} '{mpath}': shard entry {i} is {entry}; expected file {path.name} "
                              f"starting at pair {total}")
        if not path.is_file():
            raise ConfigError(f"{label} '{path}': missing shard {i} of {len(shards)} (pairs incomplete; "
                              "rerun generate_pairs to finish them)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = _unpack_meta(f.metadata())
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - a corrupt file of any kind
            raise ConfigError(f"{label} '{path}': corrupt shard ({type(e).__name__}); expected a safetensors "
                              "file with noise, labels, images; rerun generate_pairs") from None
        if meta.get("key") != key:
            raise ConfigError(f"{label} '{path}': shard key {str(meta.get('key'))[:12]}... differs from "
                              f"{MANIFEST} key {key[:12]}... (mixed runs); rerun generate_pairs")
        missing = [k for k in TENSORS if k not in tensors]
        if missing:
            raise ConfigError(f"{label} '{path}': missing tensors {missing}; expected {list(TENSORS)}")
        counts = {k: int(tensors[k].shape[0]) for k in TENSORS}
        if set(counts.values()) != {rows}:
            raise ConfigError(f"{label} '{path}': rows {counts}; expected {rows} pairs in each tensor")
        for k in TENSORS:
            parts[k].append(tensors[k])
        total += rows
    if total != num_pairs or not shards:
        raise ConfigError(f"{label} '{mpath}': shards hold {total} pairs; expected num_pairs={num_pairs} (>0)")
    noise, labels, images = (torch.cat(parts[k]) for k in TENSORS)
    if noise.shape != images.shape or labels.ndim != 1:
        raise ConfigError(f"{label} '{directory}': noise {tuple(noise.shape)} and images {tuple(images.shape)} "
                          f"differ or labels {tuple(labels.shape)} is not 1-D")
    pairs = TeacherPairs(noise.float(), labels.long(), images.float(), made_by, sampler,
                         manifest.get("config"))
    if teacher_sha256 is not None:
        pairs.check_teacher(teacher_sha256, what or f"pairs '{directory}'")
    return pairs
