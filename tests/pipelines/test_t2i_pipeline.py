"""t2i_pipeline end to end on a throwaway ZenML store: a tiny caption folder (PNG files + metadata.jsonl) through
GE validation, the project's tokenizer, text
encoder, VAE and teacher, latent cache, DMD2, evaluation, gate and export as a stock StableDiffusionPipeline -
then a rerun with only a distill parameter changed, which must take everything upstream of distill from the cache."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.pipelines.conftest import INSPECT, ROOT, make_zenml_env

TINY = {"text": {"max_length": 8, "hidden": 32, "layers": 1, "heads": 2},
        "vae": {"block_out_channels": [8, 16, 16], "train_steps": 2, "batch_size": 8},
        "teacher": {"block_out_channels": [16, 32], "train_steps": 2, "batch_size": 8, "sampler_steps": 2},
        "distill": {"iterations": 2, "batch_size": 8, "log_every": 1},
        "evaluation": {"num_samples": 10, "feature_steps": 2, "batch_size": 10},
        "gate": {"class_acc_min": None, "class_acc_min_real": None, "fid_ratio_max": None, "excess_fid_ratio_max": None,
                 "fid_max": 1e9, "beat_production": False}}


def caption_folder(root):
    """24 16x16 images, each a bright square in one of two places, captioned by where it is."""
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):
        img = np.zeros((16, 16, 3), np.uint8)
        left = i % 2 == 0
        img[4:12, (1 if left else 8):(1 if left else 8) + 7] = 200 + rng.integers(0, 50)
        Image.fromarray(img).save(root / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"a square on the {'left' if left else 'right'}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


# both runs and their inspection in one process (a ZenML start-up costs ~15 s; the README's command line itself,
# `zenml pipeline run t2i_pipeline`, is checked by tests/pipelines/test_short_form.py)
RUNS_AND_INSPECT = """
import sys
from pipelines.t2i_pipeline import t2i_pipeline
for config in sys.argv[1:]:
    t2i_pipeline.with_options(config_path=config)()
sys.argv[1:] = ["t2i_first", "t2i_distill_changed", "t2i_user_folder"]
""" + INSPECT


def user_sd_folder(captions, out):
    """A user's SD-layout folder (tokenizer, text encoder, VAE, UNet, DDIM scheduler; random weights) that knows
    the caption folder's words: what `teacher.path` points at."""
    import torch
    from diffusers import DDIMScheduler

    from components.t2i.caption_folder import load_caption_folder
    from components.t2i.config import TextConfig
    from components.t2i.run import stage_text
    from components.t2i.sd import SD_SCHEDULE, build_unet, build_vae

    parts = stage_text(TextConfig(**TINY["text"]), load_caption_folder(captions, 16, 0.25))
    torch.manual_seed(0)
    parts = parts.with_parts(vae=build_vae((8, 16, 16), resolution=16).eval(),
                             unet=build_unet(4, 4, TINY["text"]["hidden"], (16, 32)).eval(),
                             scheduler=DDIMScheduler(**SD_SCHEDULE))
    parts.save(out)
    return out


@pytest.fixture(scope="module")
def t2i_runs(tmp_path_factory):
    """'first', then 'distill_changed' (distill.iterations 3) on the same store, then 'user_folder' (teacher.path:
    a user's SD folder instead of the built-in parts)."""
    tmp = tmp_path_factory.mktemp("t2i_pipeline")
    env = make_zenml_env(tmp)
    env["HF_HUB_OFFLINE"] = "1"
    folder = caption_folder(tmp / "captions")
    user = user_sd_folder(folder, tmp / "my-sd")
    runs, paths = {}, {}
    for name, distill, teacher in (("first", {}, {}), ("distill_changed", {"iterations": 3}, {}),
                                   ("user_folder", {}, {"path": str(user)})):
        params = {k: dict(v) for k, v in TINY.items()}
        params["data"] = {"source": "folder", "path": str(folder), "resolution": 16, "eval_fraction": 0.25}
        params["distill"] = {**params["distill"], **distill}
        params["teacher"] = {**params["teacher"], **teacher}
        params["export"] = {"path": str(tmp / f"export_{name}")}
        cfg = {"enable_cache": True, "run_name": f"t2i_{name}", "parameters": {"params_file": None, **params}}
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg))
        runs[name] = {"export": tmp / f"export_{name}"}
    proc = subprocess.run([sys.executable, "-c", RUNS_AND_INSPECT, *(str(p) for p in paths.values())],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, i in zip(runs, info):
        runs[name]["info"] = i
    runs["user_folder"]["teacher"] = user
    return runs


def test_t2i_pipeline_runs_end_to_end_and_exports_a_stock_pipeline(t2i_runs):
    from diffusers import DiffusionPipeline, LCMScheduler

    first = t2i_runs["first"]
    assert first["info"]["status"].endswith("completed")
    assert {"t2i_captions", "t2i_text_encoder", "t2i_vae", "t2i_latents", "t2i_teacher", "t2i_feature_net",
            "t2i_distill", "t2i_evaluate", "t2i_gate", "t2i_export"} <= set(first["info"]["steps"])
    folder = first["export"]
    card = json.loads((folder / "fewstep_student.json").read_text())
    assert card["steps"] == 1 and card["timesteps"] == [999]
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler)
    img = pipe("a square on the left", num_inference_steps=1, guidance_scale=0, height=16, width=16,
               output_type="np").images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


def test_t2i_rerun_with_distill_changed_reuses_everything_upstream(t2i_runs):
    steps = t2i_runs["distill_changed"]["info"]["steps"]
    upstream = ("t2i_captions", "t2i_text_encoder", "t2i_vae", "t2i_latents", "t2i_teacher", "t2i_feature_net")
    assert all(steps[s].endswith("cached") for s in upstream), steps
    assert steps["t2i_distill"].endswith("completed") and steps["t2i_evaluate"].endswith("completed")


def test_a_users_sd_folder_gives_a_gated_exported_1_step_student(t2i_runs):
    """teacher.path: the folder's parts are loaded (nothing trained), distilled, gated and exported with the
    user's own VAE, text encoder and tokenizer."""
    from components.diffusion.denoiser import state_hash
    from components.t2i.parts import SDParts

    run = t2i_runs["user_folder"]
    steps = run["info"]["steps"]
    assert run["info"]["status"].endswith("completed")
    assert "t2i_load_teacher" in steps and not {"t2i_text_encoder", "t2i_vae"} & set(steps)
    assert steps["t2i_teacher"].endswith("completed") and steps["t2i_export"].endswith("completed")
    exported, user = SDParts.load(run["export"]), SDParts.load(run["teacher"])
    assert json.loads((run["export"] / "fewstep_student.json").read_text())["steps"] == 1
    for part in ("vae", "text_encoder"):
        assert state_hash(getattr(exported, part)) == state_hash(getattr(user, part)), part
    assert exported.unet.config.block_out_channels == user.unet.config.block_out_channels
    assert state_hash(exported.unet) != state_hash(user.unet)                  # the distilled student
