import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from components import checkpoint as ckpt
from components.checkpoint import config_diff, describe_diff, latest_checkpoint, load_checkpoint, save_checkpoint
from components.config import ConfigError


def _setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    gen = torch.Generator().manual_seed(seed + 100)
    return model, ema, opt, sched, gen


def _train(model, ema, opt, sched, gen, steps):
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)        # the explicit generator ...
        loss = model(x).pow(2).mean()                # ... and the global RNG (dropout)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 0.1)


def _state(model, ema, opt, sched, gen):
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": {"gen": gen.get_state(), "torch": torch.get_rng_state()}}


def test_round_trip_resumes_bitwise(tmp_path):
    objs = _setup(0)
    _train(*objs, steps=2)
    base = torch.arange(12.0).reshape(3, 4)
    state = {**_state(*objs),
             "counters": {"step": 2, "best": float("nan"), "lo": float("-inf"), "loss": 0.1 + 0.2, "none": None,
                          "name": "dmd", "flag": True, "hist": [1, [2.5, float("inf")], {"a": -1}], "pair": (1, "x")},
             "odd": {"__tensor__": "not a tag", 3: "int key"},
             "tensors": {"base": base, "view": base[1], "t": base.T, "same": base,
                         "bf16": torch.ones(3, dtype=torch.bfloat16), "mask": torch.tensor([True, False]),
                         "scalar": torch.tensor(7, dtype=torch.int64)}}
    meta = {"config": {"distill": {"lr_gen": 2e-4, "channels": (16, 32)}}, "teacher_hash": "abc"}
    folder = save_checkpoint(tmp_path / "ck", 2, state, meta)
    assert folder == tmp_path / "ck" / "step-00000002"
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"]
    assert "nan" in (folder / "state.json").read_text() and "NaN" not in (folder / "state.json").read_text()

    _train(*objs, steps=3)                            # continue the in-memory original
    loaded, meta2 = load_checkpoint(folder)
    assert meta2 == meta
    c = loaded["counters"]
    assert c["step"] == 2 and math.isnan(c["best"]) and c["lo"] == -math.inf and c["loss"] == 0.1 + 0.2
    assert c["none"] is None and c["name"] == "dmd" and c["flag"] is True and c["pair"] == (1, "x")
    assert c["hist"] == [1, [2.5, math.inf], {"a": -1}]
    assert loaded["odd"] == {"__tensor__": "not a tag", 3: "int key"}
    for k, t in state["tensors"].items():
        assert loaded["tensors"][k].dtype == t.dtype and torch.equal(loaded["tensors"][k], t), k
    assert set(loaded["optimizer"]["state"]) == {0, 1, 2, 3}                     # int keys kept
    assert loaded["rng"]["gen"].dtype == torch.uint8

    model, ema, opt, sched, gen = _setup(1)           # fresh objects, other init
    model.load_state_dict(loaded["model"])
    ema.load_state_dict(loaded["ema"])
    opt.load_state_dict(loaded["optimizer"])
    sched.load_state_dict(loaded["scheduler"])
    gen.set_state(loaded["rng"]["gen"])
    torch.set_rng_state(loaded["rng"]["torch"])
    assert opt.param_groups[0]["betas"] == (0.8, 0.95)
    _train(model, ema, opt, sched, gen, steps=3)
    for a, b in zip(list(objs[0].parameters()) + list(objs[1].parameters()),
                    list(model.parameters()) + list(ema.parameters())):
        assert torch.equal(a, b)
    assert sched.last_epoch == objs[3].last_epoch == 5
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg_sq"], objs[2].state_dict()["state"][0]["exp_avg_sq"])


def test_atomic_writes_and_keep(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    for step in (1, 2, 3):
        save_checkpoint(d, step, {"w": torch.full((2,), float(step))}, {"step": step}, keep=2)
    assert sorted(p.name for p in d.iterdir()) == ["step-00000002", "step-00000003"]
    (d / ".step-00000004.tmp").mkdir()
    (d / ".step-00000004.tmp" / "state.json").write_text("{}")
    (d / "step-00000005").mkdir()
    (d / "step-00000005" / "state.json").write_text("{}")
    assert latest_checkpoint(d) == d / "step-00000003"
    assert latest_checkpoint(tmp_path / "nothing") is None

    def crash(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(ckpt, "save_file", crash)     # a crash mid-write leaves no step-* folder
    with pytest.raises(RuntimeError):
        save_checkpoint(d, 6, {"w": torch.zeros(2)}, {})
    assert not (d / "step-00000006").exists() and not (d / ".step-00000006.tmp").exists()
    assert latest_checkpoint(d) == d / "step-00000003"
    monkeypatch.undo()

    save_checkpoint(d, 3, {"w": torch.full((2,), 30.0)}, {}, keep=2)           # re-saving a step replaces it
    assert torch.equal(load_checkpoint(d / "step-00000003")[0]["w"], torch.full((2,), 30.0))
    with pytest.raises(ConfigError, match="state field 'a.0.b'.*unsupported type object"):
        save_checkpoint(d, 7, {"a": [{"b": object()}]}, {})
    with pytest.raises(ConfigError, match="meta field 'x'.*tensor is not allowed"):
        save_checkpoint(d, 7, {}, {"x": torch.zeros(1)})
    assert not (d / "step-00000007").exists()


def test_load_errors_are_one_line_and_name_the_path(tmp_path):
    good = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2), "v": torch.ones(3)}, {})

    def err(path, what):
        with pytest.raises(ConfigError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert f"'{path}'" in msg and what in msg and "\n" not in msg and "save_checkpoint" in msg
        return msg

    err(tmp_path / "missing", "folder not found")
    (good / "state.json").write_text('{"format": "fewstep-checkpoint", "version": 1,\n "state": {')
    err(good, "not readable JSON")
    good = save_checkpoint(tmp_path, 2, {"w": torch.zeros(2), "v": torch.ones(3)}, {})
    save_file({"w": torch.zeros(2)}, str(good / "state.safetensors"))
    err(good, "lacks tensor 'v'")
    (good / "state.safetensors").write_bytes(b"\x00garbage")
    err(good, "state.safetensors is not readable")
    (good / "state.safetensors").unlink()
    err(good, "missing state.safetensors")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000001"       # step 2 lacks a file now
    third = save_checkpoint(tmp_path, 3, {"net": {"w": torch.zeros(2)}}, {})
    assert set(load_file(str(third / "state.safetensors"))) == {"net.w"}      # readable tensor keys
    assert json.loads((third / "state.json").read_text())["step"] == 3


def test_config_diff_and_describe():
    saved = {"distill": {"lr_gen": 2e-4, "seed": 0, "dims": (16, 32), "nan": float("nan")},
             "tracking": {"run": "a"}, "data": {"path": "x", "old": 1}}
    current = {"distill": {"lr_gen": 1e-4, "seed": 1, "dims": [16, 32], "nan": float("nan")},
               "tracking": {"run": "b"}, "data": {"path": "x", "new": True}}
    assert config_diff(saved, current) == ["data.new", "data.old", "distill.lr_gen", "distill.seed", "tracking.run"]
    keys = config_diff(saved, current, ignore=("tracking", "data.new", "data.ol"))
    assert keys == ["data.old", "distill.lr_gen", "distill.seed"]
    assert config_diff(saved, copy.deepcopy(saved)) == []
    assert config_diff({"a": 1}, {"a": True}) == ["a"]
    assert describe_diff(saved, current, ["distill.lr_gen", "distill.seed"]) == \
        "distill.lr_gen (checkpoint 0.0002, run 0.0001), distill.seed (checkpoint 0, run 1)"
    assert describe_diff(saved, current, ["data.old"]) == "data.old (checkpoint 1, run absent)"


def test_the_same_state_saves_to_the_same_bytes(tmp_path):
    """A rerun of the same training writes checkpoints with the same md5 (what dvc.lock records): no key order
    left to chance in state.json or in the safetensors header."""
    import hashlib

    objs = _setup(0)
    _train(*objs, steps=2)
    state, meta = _state(*objs), {"logs": {"loss_b": 1.0, "loss_a": 2.0}, "config": {"z": 1, "a": [1, 2]}}
    folders = [save_checkpoint(tmp_path / name, 2, state, meta) for name in ("one", "two", "three")]
    for f in ("state.json", "state.safetensors"):
        assert len({hashlib.md5((d / f).read_bytes()).hexdigest() for d in folders}) == 1, f
