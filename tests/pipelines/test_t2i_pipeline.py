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
sys.argv[1:] = ["t2i_first", "t2i_distill_changed"]
""" + INSPECT


@pytest.fixture(scope="module")
def t2i_runs(tmp_path_factory):
    """'first', then 'distill_changed' (distill.iterations 3) on the same store."""
    tmp = tmp_path_factory.mktemp("t2i_pipeline")
    env = make_zenml_env(tmp)
    env["HF_HUB_OFFLINE"] = "1"
    folder = caption_folder(tmp / "captions")
    runs, paths = {}, {}
    for name, distill in (("first", {}), ("distill_changed", {"iterations": 3})):
        params = {k: dict(v) for k, v in TINY.items()}
        params["data"] = {"source": "folder", "path": str(folder), "resolution": 16, "eval_fraction": 0.25}
        params["distill"] = {**params["distill"], **distill}
        params["export"] = {"path": str(tmp / f"export_{name}")}
        cfg = {"enable_cache": True, "run_name": f"t2i_{name}", "parameters": {"params_file": None, **params}}
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg))
        runs[name] = {"export": tmp / f"export_{name}"}
    proc = subprocess.run([sys.executable, "-c", RUNS_AND_INSPECT, str(paths["first"]), str(paths["distill_changed"])],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, i in zip(runs, info):
        runs[name]["info"] = i
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
