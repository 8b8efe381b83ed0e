"""Checkpoints and exact resume: a distillation killed mid-way (SIGKILL) and resumed ends with the
same weights as an uninterrupted run; a checkpoint of another config is refused by name."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.config import ConfigError
from components.diffusion import save_denoiser
from components.methods import build_method, distill

ROOT = Path(__file__).resolve().parents[2]
# 2-step student with backward simulation, GAN, EMA, LR warm-up and TTUR: every piece of state matters
CFG = {"method": "dmd2", "iterations": 16, "batch_size": 16, "log_every": 2, "checkpoint_every": 4,
       "denoising_timesteps": [999, 499], "dfake_gen_update_ratio": 2, "lr_warmup": 3, "w_gen": 0.1, "w_D": 0.5,
       "ema_decay": 0.9, "seed": 3}

SCRIPT = """
import json, os, signal, sys
from safetensors.torch import save_file
from components.config import DataConfig
from components.data import load_dataset
from components.diffusion import load_denoiser
from components.methods import build_method, distill
data_path, teacher_dir, cfg, out, kill_at = sys.argv[1:6]
m = build_method(load_denoiser(teacher_dir), json.loads(cfg), load_dataset(DataConfig(path=data_path)))
def callback(iteration, row):
    if iteration == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)          # no cleanup, no finally: a real crash
history = distill(m, progress=False, callback=callback)
nets = {"G": m.G, "fake": m.fake, "G_ema": m.G_ema, "D": m.D}
save_file({f"{n}.{k}": v.contiguous() for n, net in nets.items() for k, v in net.state_dict().items()}, out)
print(json.dumps(history))
"""


def _run(args, kill_at=0):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args), str(kill_at)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def teacher_dir(tiny_teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    save_denoiser(tiny_teacher, d)
    return d


def test_killed_run_resumes_to_the_uninterrupted_result(teacher_dir, digits_npz, tmp_path):
    straight = {**CFG, "checkpoint_dir": str(tmp_path / "a")}
    r = _run([digits_npz, teacher_dir, json.dumps(straight), tmp_path / "a.safetensors"])
    assert r.returncode == 0, r.stderr[-3000:]
    crashed = {**CFG, "checkpoint_dir": str(tmp_path / "b")}
    r = _run([digits_npz, teacher_dir, json.dumps(crashed), tmp_path / "b.safetensors"], kill_at=10)
    assert r.returncode == -9 and not (tmp_path / "b.safetensors").exists()
    runs = list((tmp_path / "b").iterdir())
    assert len(runs) == 1 and sorted(p.name for p in runs[0].iterdir()) == ["step-00000004", "step-00000008"]
    r = _run([digits_npz, teacher_dir, json.dumps(crashed), tmp_path / "b.safetensors"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "iteration 8" in r.stderr
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("D.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    # the history (losses by iteration) of the resumed run is the whole run's
    assert json.loads(r.stdout.strip().splitlines()[-1])[-1]["iteration"] == CFG["iterations"]


def test_resume_of_another_config_is_refused_naming_the_keys(tiny_teacher, digits, tmp_path):
    cfg = {**CFG, "iterations": 4, "checkpoint_dir": str(tmp_path)}
    distill(build_method(tiny_teacher, cfg, digits), progress=False)
    (run,) = list(tmp_path.iterdir())
    other = {**cfg, "lr_gen": 1e-3, "seed": 4, "resume": str(run)}
    with pytest.raises(ConfigError) as err:
        distill(build_method(tiny_teacher, other, digits), progress=False)
    msg = str(err.value)
    assert "distill.lr_gen (checkpoint 0.0005, run 0.001)" in msg and "distill.seed" in msg and "\n" not in msg
    # auto never picks up another config's checkpoints: a new run folder, started from scratch
    m = build_method(tiny_teacher, {**other, "resume": "auto"}, digits)
    distill(m, progress=False)
    assert len(list(tmp_path.iterdir())) == 2
    # the same config resumes its finished run: nothing left to train, the same weights
    explicit = build_method(tiny_teacher, {**cfg, "resume": str(run)}, digits)
    distill(explicit, progress=False)
    assert explicit.step == 4
    with pytest.raises(ConfigError, match="past distill.iterations"):
        distill(build_method(tiny_teacher, {**cfg, "iterations": 2, "resume": str(run)}, digits), progress=False)
    again = build_method(tiny_teacher, cfg, digits)
    distill(again, progress=False)
    assert again.step == 4
    before = build_method(tiny_teacher, {**cfg, "resume": "never", "checkpoint_dir": str(tmp_path / "x")}, digits)
    distill(before, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(again.G.parameters(), before.G.parameters()))
