"""Export: a folder stock diffusers loads in a fresh process (torch + diffusers only) and that
samples the same images as the project's sampler.

Cost: a one-step export runs the ONNX dynamo exporter (~10 s on 2 CPUs) and every stock-diffusers
process pays the torch + diffusers import. So the one-step student is exported once per session
(`one_step_export`, also read by test_onnx_export), the 4-step one once per module, both folders are
sampled by ONE stock process (`stock_images`), and the refusal / overwrite / gate tests use the 4-step
student (no ONNX) where what they prove does not depend on the step count."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from components.config import ConfigError
from components.diffusion.generate import generate
from components.export import card_fields, export_if_passed, export_student

# argv[1]: JSON list of [folder, labels, seed, out.npy, timesteps or null]; one process, one import of diffusers
STOCK = r"""
import sys, json, numpy, torch
from diffusers import ConsistencyModelPipeline
for folder, labels, seed, out, steps in json.loads(sys.argv[1]):
    pipe = ConsistencyModelPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)      # the noise: the project's generate() draws the same
    kw = {"timesteps": steps, "num_inference_steps": None} if steps else {"num_inference_steps": 1}
    res = pipe(batch_size=len(labels), class_labels=torch.tensor(labels), generator=g, output_type="np", **kw)
    numpy.save(out, res.images)
"""

CARD = {"method": "dmd2", "metrics": {"student_fid": 1.5}, "data_md5": "abc", "class_names": list("0123456789")}
ONE_STEP_EXPORT = pytest.StashKey[tuple]()
ONE_STEP_LABELS, ONE_STEP_SEED = [0, 1, 2, 3, 9, 9], 7
FOUR_STEP_LABELS, FOUR_STEP_SEED, FOUR_STEP_TIMESTEPS = [0, 3, 5, 9], 3, [750, 500, 250, 0]


def one_step_export(config, tiny_teacher, tmp_path_factory):
    """(student, folder): a one-step copy of the tiny teacher and its export_student folder (CARD,
    ONNX included), made once per test session and shared with test_onnx_export through config.stash."""
    if ONE_STEP_EXPORT not in config.stash:
        student = copy.deepcopy(tiny_teacher)
        student.sampling = {"sampler": "fewstep", "sigmas": [student.sigma_max, 0.0]}
        folder = export_student(student, tmp_path_factory.mktemp("one_step") / "model", CARD)
        config.stash[ONE_STEP_EXPORT] = (student, folder)
    return config.stash[ONE_STEP_EXPORT]


@pytest.fixture(scope="module")
def one_step(request, tiny_teacher, tmp_path_factory):
    return one_step_export(request.config, tiny_teacher, tmp_path_factory)


@pytest.fixture(scope="module")
def four_step_student(tiny_teacher):
    """A 4-step student whose sigmas lie on DMD2's T=1000 Karras grid."""
    from components.diffusion import karras_sigmas

    s = copy.deepcopy(tiny_teacher)
    grid = karras_sigmas(1000, s.sigma_min, s.sigma_max, append_zero=False).flip(0)
    s.sampling = {"sampler": "fewstep", "sigmas": [float(grid[t]) for t in (999, 749, 499, 249)] + [0.0]}
    return s


@pytest.fixture(scope="module")
def four_step_folder(four_step_student, tmp_path_factory):
    return export_student(four_step_student, tmp_path_factory.mktemp("four_step") / "m4", {"method": "dmd2"})


@pytest.fixture(scope="module")
def stock_images(one_step, four_step_folder, tmp_path_factory):
    """What stock diffusers samples from both folders, in one fresh process that runs outside the repo
    (no project code importable): {"one_step": (N, H, W, C) in [0, 1], "four_step": ...}."""
    cwd = tmp_path_factory.mktemp("stock")
    jobs = {"one_step": [str(one_step[1]), ONE_STEP_LABELS, ONE_STEP_SEED, str(cwd / "one_step.npy"), None],
            "four_step": [str(four_step_folder), FOUR_STEP_LABELS, FOUR_STEP_SEED, str(cwd / "four_step.npy"),
                          FOUR_STEP_TIMESTEPS]}
    r = subprocess.run([sys.executable, "-c", STOCK, json.dumps(list(jobs.values()))],
                       check=False, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    return {name: np.load(job[3]) for name, job in jobs.items()}


def project_images(student, labels, seed):
    ours = generate(student, torch.tensor(labels), seed=seed, batch_size=len(labels))
    return ((ours.images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_stock_diffusers_reproduces_the_project_sampler(one_step, stock_images):
    student, out = one_step
    names = {p.name for p in out.iterdir()}
    assert {"model_index.json", "unet", "scheduler", "README.md", "onnx"} <= names
    assert (out / "onnx" / "model.onnx").is_file()            # its parity: test_onnx_export (same file)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "ConsistencyModelPipeline"
    assert any(p.suffix == ".safetensors" for p in (out / "unet").iterdir())
    card = (out / "README.md").read_text()
    assert "student_fid" in card and "abc" in card and "ConsistencyModelPipeline" in card
    assert "onnx/model.onnx" in card

    stock = stock_images["one_step"]                                          # (N, H, W, C) in [0, 1]
    ours = project_images(student, ONE_STEP_LABELS, ONE_STEP_SEED)
    assert stock.shape == ours.shape
    diff = float(np.abs(stock - ours).max())
    print(f"max abs diff stock diffusers vs project sampler: {diff:.2e}")
    assert diff <= 1e-4


def test_multistep_student_exports_with_its_timesteps(four_step_student, four_step_folder, stock_images, tmp_path):
    """A 4-step student (sigmas of DMD2's T=1000 grid) sampled by stock diffusers with `timesteps`."""
    card = (four_step_folder / "README.md").read_text()
    assert f"timesteps={FOUR_STEP_TIMESTEPS}" in card and not (four_step_folder / "onnx").exists()
    ours = project_images(four_step_student, FOUR_STEP_LABELS, FOUR_STEP_SEED)
    assert stock_images["four_step"].shape == ours.shape
    diff = float(np.abs(stock_images["four_step"] - ours).max())
    print(f"4-step: max abs diff stock diffusers vs project sampler: {diff:.2e}")
    assert diff <= 1e-3          # re-noise std sqrt(s^2 - s_min^2) in diffusers vs s here: ~1e-5 relative
    off = copy.deepcopy(four_step_student)
    off.sampling = {"sampler": "fewstep", "sigmas": [80.0, 1.0, 0.0]}
    with pytest.raises(ConfigError, match="not on the 1000-point Karras grid"):
        export_student(off, tmp_path / "m")
    assert not any(tmp_path.iterdir())                                       # refused before writing


def test_export_refuses_a_non_empty_target_unless_asked(tmp_path, tiny_teacher, four_step_student):
    one_step = copy.deepcopy(tiny_teacher)
    one_step.sampling = {"sampler": "fewstep", "sigmas": [one_step.sigma_max, 0.0]}
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    # refused before anything is written (so no export - and no ONNX export - runs)
    with pytest.raises(ConfigError, match=r"export target '.*model' is not empty"):
        export_student(one_step, target)
    assert (target / "keep.txt").read_text() == "mine"                     # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model"]               # no temp folder either
    (tmp_path / "file").write_text("x")                                    # a file is not an empty folder
    with pytest.raises(ConfigError, match="is not empty"):
        export_student(one_step, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    (tmp_path / "file").unlink()
    # overwrite replaces the folder whatever the step count: the 4-step student needs no ONNX export
    export_student(four_step_student, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model_index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]               # temp and moved-aside folders gone
    (tmp_path / "empty").mkdir()                                           # an empty folder needs no overwrite
    export_student(four_step_student, tmp_path / "empty")
    assert (tmp_path / "empty" / "model_index.json").is_file()


def test_export_if_passed_writes_the_folder_or_only_the_rejection(tmp_path, four_step_student):
    """The gate's export: a pass writes the stock-diffusers folder, a rejection a folder holding only
    REJECTED.md with the reasons - replacing an earlier deployable folder only when overwrite is set.
    (The 4-step student: the gating does not depend on the step count, and it needs no ONNX export.)"""
    reasons = ["student_fid 9.1 > 5.0", "speedup 2.0 < 4.0"]
    rejected = tmp_path / "rejected"
    assert export_if_passed(four_step_student, rejected, False, reasons, {}) is False
    assert [p.name for p in rejected.iterdir()] == ["REJECTED.md"]
    assert (rejected / "REJECTED.md").read_text() == "Not exported: " + "; ".join(reasons) + "\n"

    card = card_fields("dmd2", {"teacher_nfe": 35, "student_fid": 2.5, "sample_seconds": 0.3}, list("0123456789"),
                       "data/digits.npz", "md5abc", {"distill": {"steps": 4}}, git_commit="deadbeef")
    target = tmp_path / "model"
    assert export_if_passed(four_step_student, target, True, [], card) is True
    assert {"model_index.json", "unet", "scheduler", "README.md"} <= {p.name for p in target.iterdir()}
    assert not (target / "REJECTED.md").exists()
    readme = (target / "README.md").read_text()
    assert "fewstep DMD2 student" in readme and "35-NFE" in readme and "md5abc" in readme and "deadbeef" in readme
    assert "student_fid" in readme and "sample_seconds" not in readme     # wall-clock figures left out

    with pytest.raises(ConfigError, match="is not empty"):                 # a later rejection: no silent replace
        export_if_passed(four_step_student, target, False, reasons, card)
    assert (target / "model_index.json").is_file() and not (target / "REJECTED.md").exists()
    assert export_if_passed(four_step_student, target, False, reasons, card, overwrite=True) is False
    assert [p.name for p in target.iterdir()] == ["REJECTED.md"]          # the rejected student is not deployable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "rejected"]


def test_onnx_can_be_left_out(tmp_path, one_step):
    """export.onnx: false writes the diffusers folder alone, and the model card says so."""
    student, _ = one_step
    folder = export_student(student, tmp_path / "model", CARD, onnx=False)
    assert not (folder / "onnx").exists() and (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    card = (folder / "README.md").read_text()
    assert "export.onnx was off" in card and "onnxruntime" not in card
