"""Export a latent student as a complete stock StableDiffusionPipeline folder: the student's UNet (a LoRA
student's adapters fused in) with the teacher's VAE, text encoder and tokenizer, and an LCMScheduler whose
timesteps without a `timesteps=` argument are the student's training timesteps (original_inference_steps
= the step count gives 1 step [999], 2 [999, 499], 4 [999, 749, 499, 249]: T2I-NOTES.md, re-checked at
export). LCM's step is the DMD2 student's sampler: x0 from the prediction, fresh noise to the next
timestep (its c_skip at t >= 249 is < 1e-7). A LoRA student's adapters also go into <folder>/lora/, a LoRA
file that stock `load_lora_weights` puts on the teacher, alpha in its adapter metadata.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("models/t2i_student")
    image = pipe("a dark photo of a sneaker", num_inference_steps=1, guidance_scale=0).images[0]
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from components.atomic import atomic_dir
from components.config import ConfigError

STUDENT_CARD = "fewstep_student.json"


def lcm_scheduler(teacher_scheduler, timesteps: list[int]):
    """An LCMScheduler on the teacher's schedule whose default timesteps at len(timesteps) steps are `timesteps`."""
    from diffusers import LCMScheduler

    steps = len(timesteps)
    sched = LCMScheduler.from_config(teacher_scheduler.config, original_inference_steps=steps)
    probe = copy.deepcopy(sched)
    probe.set_timesteps(steps)
    got = [int(t) for t in probe.timesteps]
    if got != list(timesteps):
        raise ConfigError(f"config field 'distill.denoising_timesteps': {list(timesteps)} are not the timesteps a stock "
                          f"LCMScheduler takes at {steps} steps ({got}); train the student at those")
    return sched


def export_student(student_dir: str | Path, teacher, out: str | Path, extra: dict | None = None) -> dict:
    """A saved latent student (parts.save_student) + the teacher's VAE, text encoder and tokenizer (an SDParts or
    a pipeline) -> `out`: a stock StableDiffusionPipeline folder with the LCM scheduler at the student's
    timesteps, its lora/ (a LoRA student) and fewstep_student.json; written atomically. -> the card."""
    import shutil

    from diffusers import UNet2DConditionModel

    from components.t2i.parts import student_info
    from components.t2i.sd import assemble

    student_dir, out = Path(student_dir), Path(out)
    info = student_info(student_dir)
    sched = lcm_scheduler(teacher.scheduler, info["timesteps"])
    unet = UNet2DConditionModel.from_pretrained(student_dir / "unet", local_files_only=True)
    card = {"steps": len(info["timesteps"]), "timesteps": info["timesteps"], "guidance_scale": 0.0,
            "scheduler": "LCMScheduler", "prediction_type": teacher.scheduler.config.prediction_type,
            "lora": info.get("lora"), **(extra or {})}
    pipe = assemble(unet, teacher.vae, teacher.text_encoder, teacher.tokenizer, sched)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if (student_dir / "lora").is_dir():
            shutil.copytree(student_dir / "lora", tmp / "lora")
        (tmp / STUDENT_CARD).write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    return card


__all__ = ["STUDENT_CARD", "export_student", "lcm_scheduler"]
