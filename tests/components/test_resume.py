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
from components.data import ImageDataset
from components.diffusion import load_denoiser, save_denoiser
from components.methods import build_method, distill

ROOT = Path(__file__).resolve().parents[2]
# 2-step student with backward simulation (rolled out by the EMA), GAN, EMA, LR warm-up and TTUR:
# every piece of state matters. Sized so that the kill and the resume fall inside all of it: 6
# iterations, checkpoints at 2 and 4, killed after 5 (computed, never saved). At the resume (from
# 4) G has had 2 of its 3 warm-up updates (TTUR 2), the fake score is past its warm-up, and with
# seed 3 the resumed iterations 5 and 6 both draw student step k = 1, so G_ema rolls out the input.
# Every value the test relies on is set here (the config defaults follow params.yaml).
CFG = {"method": "dmd2", "iterations": 6, "batch_size": 16, "log_every": 1, "checkpoint_every": 2, "fid_every": 0,
       "denoising_timesteps": [999, 499], "backward_simulation": True, "rollout_model": "ema",
       "dfake_gen_update_ratio": 2, "lr_warmup": 3, "lr_gen": 5e-4, "lr_fake": 5e-4, "w_gen": 0.1, "w_D": 0.5,
       "gan_max_step_percent": 0.3, "ema_decay": 0.9, "seed": 3, "resume": "auto"}
KILL_AT = 5

# Runs the jobs [cfg, out, kill_at] in turn in one fresh process; each writes its four networks to
# `out` and its history to `out`.json. kill_at > 0: SIGKILL from inside the run at that iteration.
# The tests resume in-process, with the same single intra-op thread (the fixture one_thread).
SCRIPT = """
import json, os, signal, sys
from safetensors.torch import save_file
from components.data import ImageDataset
from components.diffusion import load_denoiser
from components.methods import build_method, distill
data_dir, teacher_dir, jobs = sys.argv[1:4]
teacher, data = load_denoiser(teacher_dir), ImageDataset.load(data_dir)
for cfg, out, kill_at in json.loads(jobs):
    m = build_method(teacher, cfg, data)
    def callback(iteration, row):
        if iteration == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)          # no cleanup, no finally: a real crash
    history = distill(m, progress=False, callback=callback)
    nets = {"G": m.G, "fake": m.fake, "G_ema": m.G_ema, "D": m.D}
    save_file({f"{n}.{k}": v.contiguous() for n, net in nets.items() for k, v in net.state_dict().items()}, out)
    with open(out + ".json", "w") as f:
        json.dump(history, f)
"""


def _run(data_dir, teacher_dir, jobs):
    # one thread: these convolutions are tiny, and a second OpenMP thread only waits on a busy CI box
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", SCRIPT, str(data_dir), str(teacher_dir), json.dumps(jobs)],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def inputs(tiny_teacher, digits, tmp_path_factory):
    """The session's digits and tiny teacher on disk for the subprocesses (the dataset already
    ingested and validated: a subprocess only loads its tensors)."""
    d = tmp_path_factory.mktemp("resume-inputs")
    digits.save(d / "dataset")
    save_denoiser(tiny_teacher, d / "teacher")
    return d / "dataset", d / "teacher"


def _networks(m) -> dict:
    nets = {"G": m.G, "fake": m.fake, "G_ema": m.G_ema, "D": m.D}
    return {f"{n}.{k}": v for n, net in nets.items() for k, v in net.state_dict().items()}


def test_killed_run_resumes_to_the_uninterrupted_result(inputs, tmp_path, capsys, one_thread):
    data_dir, teacher_dir = inputs
    a_out, b_out = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    straight = {**CFG, "checkpoint_dir": str(tmp_path / "a")}
    crashed = {**CFG, "checkpoint_dir": str(tmp_path / "b")}
    # a fresh process: the uninterrupted run, then the same config in another folder, SIGKILLed after iteration 5
    r = _run(data_dir, teacher_dir, [[straight, a_out, 0], [crashed, b_out, KILL_AT]])
    assert r.returncode == -9, r.stderr[-3000:]
    assert (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
    runs = list((tmp_path / "b").iterdir())
    assert len(runs) == 1 and sorted(p.name for p in runs[0].iterdir()) == ["step-00000002", "step-00000004"]
    # the same config again, with nothing from the killed process but its files: it resumes and finishes
    m = build_method(load_denoiser(teacher_dir), crashed, ImageDataset.load(data_dir))
    history = distill(m, progress=False)
    err = capsys.readouterr().err
    assert "resumed from" in err and "iteration 4" in err
    a, b = load_file(a_out), _networks(m)
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} == {"G", "fake", "G_ema", "D"}
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    # the history (losses by iteration) of the resumed run is the whole run's, the lost iteration 5 redone
    assert [row["iteration"] for row in history] == list(range(1, CFG["iterations"] + 1))
    assert history == json.loads(Path(a_out + ".json").read_text())
    assert any("loss_dm" in row and "loss_gan_G" in row for row in history[KILL_AT - 1:])


def test_resume_of_another_config_is_refused_naming_the_keys(tiny_teacher, digits, tmp_path, one_thread):
    cfg = {**CFG, "iterations": 2, "checkpoint_dir": str(tmp_path)}
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
    assert explicit.step == 2
    with pytest.raises(ConfigError, match="past distill.iterations"):
        distill(build_method(tiny_teacher, {**cfg, "iterations": 1, "resume": str(run)}, digits), progress=False)
    again = build_method(tiny_teacher, cfg, digits)
    distill(again, progress=False)
    assert again.step == 2
    before = build_method(tiny_teacher, {**cfg, "resume": "never", "checkpoint_dir": str(tmp_path / "x")}, digits)
    distill(before, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(again.G.parameters(), before.G.parameters()))
