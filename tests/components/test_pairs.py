"""Teacher noise -> image pairs: correctness, resumable sharding, the cache key, clear errors."""
import json

import pytest
import torch

import components.diffusion.generate as gen
from components.config import ConfigError, PairsConfig
from components.diffusion import EDMDenoiser, state_hash
from components.diffusion.generate import balanced_labels, sample_batch
from components.diffusion.pairs import (MANIFEST, TeacherPairs, generate_pairs, load_pairs, pairs_key,
                                        shard_name, write_pairs)
from components.nets import build_unet


def _teacher(seed=0, sigmas=(80.0, 2.0, 0.0)):
    """A 3-class 8x8 EDM denoiser with a 2-step Heun recipe (3 NFE per batch): fast on CPU."""
    torch.manual_seed(seed)
    t = EDMDenoiser(build_unet(8, 1, 3, (16, 32), 1, 4), 3, 0.002, 80.0, 0.5).eval()
    t.sampling = {"sampler": "heun", "sigmas": list(sigmas)}
    return t


@pytest.fixture
def count_batches(monkeypatch):
    """Record the size of every sample_batch call made by generate_pairs."""
    sizes = []

    def counting(denoiser, z, labels, generator, *a, **k):
        sizes.append(len(z))
        return sample_batch(denoiser, z, labels, generator, *a, **k)

    monkeypatch.setattr(gen, "sample_batch", counting)
    return sizes


def _same(a: TeacherPairs, b: TeacherPairs):
    return (torch.equal(a.noise, b.noise) and torch.equal(a.labels, b.labels)
            and torch.equal(a.images, b.images))


def test_pairs_are_the_teachers_samples_on_their_noise(tiny_teacher, tmp_path):
    cfg = PairsConfig(num_pairs=10, shard_size=4, batch_size=3, seed=1)
    pairs = generate_pairs(tiny_teacher, cfg, tmp_path / "p", progress=False)
    c, s = tiny_teacher.unet.config.in_channels, tiny_teacher.unet.config.sample_size
    assert len(pairs) == 10
    assert pairs.noise.shape == pairs.images.shape == (10, c, s, s)
    assert pairs.noise.dtype == pairs.images.dtype == torch.float32 and pairs.labels.dtype == torch.int64
    assert torch.equal(pairs.labels, balanced_labels(10, tiny_teacher.num_classes))
    counts = torch.bincount(pairs.labels, minlength=tiny_teacher.num_classes)
    assert counts.max() - counts.min() <= 1
    assert pairs.images.min() >= -1 and pairs.images.max() <= 1
    assert pairs.teacher_sha256 == state_hash(tiny_teacher) and pairs.sampler == tiny_teacher.sampling
    # recompute a few pairs (across two shards) directly with the teacher's recipe
    idx = torch.tensor([0, 5, 9])
    again = sample_batch(tiny_teacher, pairs.noise[idx], pairs.labels[idx], torch.Generator())
    assert torch.allclose(again, pairs.images[idx], atol=1e-5)
    # the noise is standard normal-ish and shards draw different noise
    assert not torch.equal(pairs.noise[:2], pairs.noise[4:6])
    assert abs(float(pairs.noise.mean())) < 0.2 and abs(float(pairs.noise.std()) - 1) < 0.2


def test_resume_only_samples_the_missing_shard(tmp_path, count_batches):
    teacher, out = _teacher(), tmp_path / "p"
    cfg = PairsConfig(num_pairs=12, shard_size=4, batch_size=2, seed=3)
    first = generate_pairs(teacher, cfg, out, progress=False)
    assert sum(count_batches) == 12 and len(count_batches) == 6
    assert sorted(p.name for p in out.glob("shard-*")) == [shard_name(i) for i in range(3)]
    # simulate a crash while shard 1 was being written: shard 1 and the manifest are gone
    (out / shard_name(1)).unlink()
    (out / MANIFEST).unlink()
    (out / f".{shard_name(1)}.tmp").write_bytes(b"half a shard")
    count_batches.clear()
    second = generate_pairs(teacher, cfg, out, progress=False)
    assert count_batches == [2, 2]                     # only shard 1's 4 pairs were sampled again
    assert _same(first, second)
    assert not list(out.glob(".*.tmp"))
    # nothing to do on a third run; a different batch size keeps the cache (same key)
    count_batches.clear()
    third = generate_pairs(teacher, PairsConfig(num_pairs=12, shard_size=4, batch_size=5, seed=3), out,
                           progress=False)
    assert count_batches == [] and _same(first, third)


def test_shards_are_independent_of_each_other(tmp_path):
    """Shard i's noise depends on (seed, i) only: more pairs extend, not reshuffle, the noise."""
    teacher = _teacher()
    a = generate_pairs(teacher, PairsConfig(num_pairs=4, shard_size=2, batch_size=4, seed=0), tmp_path / "a",
                       progress=False)
    b = generate_pairs(teacher, PairsConfig(num_pairs=6, shard_size=2, batch_size=4, seed=0), tmp_path / "b",
                       progress=False)
    c = generate_pairs(teacher, PairsConfig(num_pairs=4, shard_size=2, batch_size=4, seed=1), tmp_path / "c",
                       progress=False)
    assert torch.equal(a.noise, b.noise[:4])
    assert not torch.equal(a.noise, c.noise)


def test_key_covers_teacher_recipe_and_config_but_not_batch_size():
    recipe = {"sampler": "heun", "sigmas": [80.0, 2.0, 0.0]}
    cfg = PairsConfig(num_pairs=12, shard_size=4, batch_size=2, seed=3)
    k = pairs_key("a" * 64, recipe, cfg)
    assert k == pairs_key("a" * 64, dict(reversed(list(recipe.items()))), cfg.model_dump())
    assert k == pairs_key("a" * 64, recipe, PairsConfig(num_pairs=12, shard_size=4, batch_size=7, seed=3))
    others = {pairs_key("b" * 64, recipe, cfg),
              pairs_key("a" * 64, {"sampler": "heun", "sigmas": [80.0, 1.0, 0.0]}, cfg),
              pairs_key("a" * 64, recipe, PairsConfig(num_pairs=13, shard_size=4, batch_size=2, seed=3)),
              pairs_key("a" * 64, recipe, PairsConfig(num_pairs=12, shard_size=3, batch_size=2, seed=3)),
              pairs_key("a" * 64, recipe, PairsConfig(num_pairs=12, shard_size=4, batch_size=2, seed=4))}
    assert k not in others and len(others) == 5


def test_new_recipe_or_teacher_regenerates_and_old_pairs_are_refused(tmp_path, count_batches):
    out = tmp_path / "p"
    cfg = PairsConfig(num_pairs=6, shard_size=3, batch_size=3, seed=0)
    old = generate_pairs(_teacher(0), cfg, out, progress=False)
    # another sampler recipe: every shard is sampled again and the images change
    count_batches.clear()
    recipe = generate_pairs(_teacher(0, sigmas=(80.0, 5.0, 0.5, 0.0)), cfg, out, progress=False)
    assert count_batches == [3, 3]
    assert torch.equal(recipe.noise, old.noise) and not torch.equal(recipe.images, old.images)
    # other teacher weights: regenerated too, and the old pairs no longer pass this teacher's check
    new_teacher = _teacher(1)
    new_sha = state_hash(new_teacher)
    count_batches.clear()
    new = generate_pairs(new_teacher, cfg, out, progress=False)
    assert count_batches == [3, 3] and new.teacher_sha256 == new_sha != old.teacher_sha256
    with pytest.raises(ConfigError) as e:
        old.check_teacher(new_sha, "method.pairs")
    msg = str(e.value)
    assert msg.startswith("method.pairs:") and old.teacher_sha256[:12] in msg and new_sha[:12] in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=old.teacher_sha256[:12]):
        load_pairs(out, teacher_sha256=old.teacher_sha256, what="pairs_dir")
    assert _same(load_pairs(out, teacher_sha256=new_sha), new)


def test_fewer_pairs_remove_stale_shards(tmp_path):
    teacher, out = _teacher(), tmp_path / "p"
    generate_pairs(teacher, PairsConfig(num_pairs=9, shard_size=3, batch_size=3), out, progress=False)
    small = generate_pairs(teacher, PairsConfig(num_pairs=4, shard_size=3, batch_size=3), out, progress=False)
    assert sorted(p.name for p in out.glob("shard-*")) == [shard_name(0), shard_name(1)]
    assert len(small) == 4 and len(load_pairs(out)) == 4
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["num_pairs"] == 4 and [s["rows"] for s in manifest["shards"]] == [3, 1]


def test_write_pairs_round_trips_in_memory_pairs(tmp_path):
    teacher = _teacher()
    cfg = PairsConfig(num_pairs=5, shard_size=2, batch_size=5, seed=2)
    made = generate_pairs(teacher, cfg, tmp_path / "a", progress=False)
    key = write_pairs(made, tmp_path / "b")                    # cfg taken from made.config
    assert key == json.loads((tmp_path / "a" / MANIFEST).read_text())["key"]
    assert _same(load_pairs(tmp_path / "b"), made)
    bare = TeacherPairs(made.noise, made.labels, made.images, made.teacher_sha256, made.sampler)
    write_pairs(bare, tmp_path / "c")                           # no config: one shard
    assert [p.name for p in (tmp_path / "c").glob("shard-*")] == [shard_name(0)]
    assert _same(load_pairs(tmp_path / "c"), made)


def test_missing_or_corrupt_files_are_one_line_config_errors(tmp_path):
    teacher, out = _teacher(), tmp_path / "p"
    cfg = PairsConfig(num_pairs=6, shard_size=2, batch_size=6)
    good = generate_pairs(teacher, cfg, out, progress=False)
    with pytest.raises(ConfigError, match="no such folder"):
        load_pairs(tmp_path / "nowhere")
    (out / shard_name(1)).write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"shard-00001\.safetensors.*corrupt") as e:
        load_pairs(out)
    assert "\n" not in str(e.value)
    # generate_pairs repairs the corrupt shard, keeping the others
    assert _same(generate_pairs(teacher, cfg, out, progress=False), good)
    (out / shard_name(2)).unlink()
    with pytest.raises(ConfigError, match=r"shard-00002\.safetensors.*missing"):
        load_pairs(out)
    generate_pairs(teacher, cfg, out, progress=False)
    # a shard from another run (same file name, other key) is refused
    write_pairs(TeacherPairs(good.noise[:2], good.labels[:2], good.images[:2], "f" * 64, good.sampler),
                tmp_path / "other")
    (out / shard_name(0)).write_bytes((tmp_path / "other" / shard_name(0)).read_bytes())
    with pytest.raises(ConfigError, match=r"shard-00000\.safetensors.*key"):
        load_pairs(out)
    (out / MANIFEST).unlink()
    with pytest.raises(ConfigError, match=r"pairs\.json.*missing"):
        load_pairs(out, what="method.pairs_dir")
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError, match=r"pairs\.json.*unreadable"):
        load_pairs(out)


def test_the_same_pairs_write_the_same_bytes(tmp_path):
    """Generated twice, every shard has the same md5 (dvc.lock's hash of artifacts/pairs): the shard's own metadata
    is one sorted-JSON value, not several safetensors keys that are written in a random order."""
    import hashlib

    cfg = PairsConfig(num_pairs=6, shard_size=3, batch_size=3, seed=1)
    digests = []
    for name in ("a", "b", "c"):
        generate_pairs(_teacher(), cfg, tmp_path / name, progress=False)
        digests.append({p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (tmp_path / name).iterdir()})
    assert digests[0] == digests[1] == digests[2] and len(digests[0]) == 3       # 2 shards + the manifest
