"""Export: a folder stock diffusers loads in a fresh process (torch + diffusers only) and that
samples the same images as the project's sampler."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from components.config import ConfigError
from components.diffusion.generate import generate
from components.export import export_student

STOCK = r"""
import sys, json, numpy, torch
from diffusers import ConsistencyModelPipeline
pipe = ConsistencyModelPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
labels = torch.tensor(json.loads(sys.argv[2]))
g = torch.Generator().manual_seed(int(sys.argv[3]))      # the noise: the project's generate() draws the same
steps = json.loads(sys.argv[5])
kw = {"timesteps": steps, "num_inference_steps": None} if steps else {"num_inference_steps": 1}
out = pipe(batch_size=len(labels), class_labels=labels, generator=g, output_type="np", **kw)
numpy.save(sys.argv[4], out.images)
"""


@pytest.fixture(scope="module")
def one_step_student(tiny_teacher):
    student = copy.deepcopy(tiny_teacher)
    student.sampling = {"sampler": "fewstep", "sigmas": [student.sigma_max, 0.0]}
    return student


def test_stock_diffusers_reproduces_the_project_sampler(tmp_path, one_step_student):
    out = export_student(one_step_student, tmp_path / "model", {"method": "dmd2", "metrics": {"student_fid": 1.5},
                                                                "data_md5": "abc", "class_names": list("0123456789")})
    names = {p.name for p in out.iterdir()}
    assert {"model_index.json", "unet", "scheduler", "README.md"} <= names
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "ConsistencyModelPipeline"
    assert any(p.suffix == ".safetensors" for p in (out / "unet").iterdir())
    card = (out / "README.md").read_text()
    assert "student_fid" in card and "abc" in card and "ConsistencyModelPipeline" in card

    labels = [0, 1, 2, 3, 9, 9]
    r = subprocess.run([sys.executable, "-c", STOCK, str(out), json.dumps(labels), "7", str(tmp_path / "x.npy"), "null"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)   # not the repo: no project code
    assert r.returncode == 0, r.stderr[-2000:]
    stock = np.load(tmp_path / "x.npy")                                        # (N, H, W, C) in [0, 1]
    ours = generate(one_step_student, torch.tensor(labels), seed=7, batch_size=len(labels))
    ours = ((ours.images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert stock.shape == ours.shape
    diff = float(np.abs(stock - ours).max())
    print(f"max abs diff stock diffusers vs project sampler: {diff:.2e}")
    assert diff <= 1e-4


def test_export_refuses_a_non_empty_target_unless_asked(tmp_path, one_step_student):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"export target '.*model' is not empty"):
        export_student(one_step_student, target)
    assert (target / "keep.txt").read_text() == "mine"                     # untouched
    export_student(one_step_student, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model_index.json").is_file()
    assert not (tmp_path / ".model.tmp").exists()


def test_multistep_student_exports_with_its_timesteps(tmp_path, one_step_student):
    """A 4-step student (sigmas of DMD2's T=1000 grid) sampled by stock diffusers with `timesteps`."""
    from components.diffusion import karras_sigmas

    s = copy.deepcopy(one_step_student)
    grid = karras_sigmas(1000, s.sigma_min, s.sigma_max, append_zero=False).flip(0)
    s.sampling = {"sampler": "fewstep", "sigmas": [float(grid[t]) for t in (999, 749, 499, 249)] + [0.0]}
    out = export_student(s, tmp_path / "m4", {"method": "dmd2"})
    card = (out / "README.md").read_text()
    assert "timesteps=[750, 500, 250, 0]" in card and not (out / "onnx").exists()
    labels = [0, 3, 5, 9]
    r = subprocess.run([sys.executable, "-c", STOCK, str(out), json.dumps(labels), "3", str(tmp_path / "x.npy"),
                        "[750, 500, 250, 0]"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ours = generate(s, torch.tensor(labels), seed=3, batch_size=len(labels))
    ours = ((ours.images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(np.load(tmp_path / "x.npy") - ours).max())
    print(f"4-step: max abs diff stock diffusers vs project sampler: {diff:.2e}")
    assert diff <= 1e-3          # re-noise std sqrt(s^2 - s_min^2) in diffusers vs s here: ~1e-5 relative
    off = copy.deepcopy(s)
    off.sampling = {"sampler": "fewstep", "sigmas": [80.0, 1.0, 0.0]}
    with pytest.raises(ConfigError, match="not on the 1000-point Karras grid"):
        export_student(off, tmp_path / "m")
