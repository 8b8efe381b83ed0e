"""Export a student as a folder that stock diffusers loads with no project code.

The folder is a `ConsistencyModelPipeline` (diffusers' pipeline for EDM-preconditioned one- and
few-step class-conditional generators): `model_index.json`, `unet/` (UNet2DModel, safetensors),
`scheduler/` (CMStochasticIterativeScheduler with the student's sigma range), plus a model card
(`README.md`) and `denoiser.json` (this project's record of the sampling recipe).

    from diffusers import ConsistencyModelPipeline
    pipe = ConsistencyModelPipeline.from_pretrained("models/dmd2_student")
    images = pipe(batch_size=8, class_labels=list(range(8)), num_inference_steps=1).images
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from components.atomic import atomic_dir
from components.config import ConfigError
from components.diffusion.cascade import CascadeDenoiser, level_nfe
from components.diffusion.denoiser import DENOISER_FILE, S_EMBEDDING_FILE, CTMDenoiser, EDMDenoiser, GuidedDenoiser
from components.diffusion.routed import ROUTING_FILE, RoutedDenoiser
from components.onnx_export import export_cascade_onnx, export_guided_onnx, export_onnx


def check_export_target(target: str | os.PathLike, overwrite: bool) -> Path:
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ConfigError(f"export target '{target}' is not empty; choose an empty folder or set "
                          "export.overwrite: true to replace it")
    return target


def _figure_rows(card: dict) -> str:
    """The model card's figures table rows; wall-clock figures vary from run to run: leaving them out keeps the
    folder reproducible."""
    return "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in card.get("metrics", {}).items() if isinstance(v, (int, float, str))
                     and not k.endswith("_seconds") and k != "sampling_speedup")


def _provenance(card: dict) -> str:
    """The model card's provenance section: data, code, config."""
    return f"""## Provenance
- data: `{card.get('data_path', '')}` (DVC md5 `{card.get('data_md5', '')}`)
- code: git `{card.get('git_commit') or 'see dvc.lock'}`
- config:
```json
{json.dumps(card.get('config', {}), indent=1, sort_keys=True)}
```
"""


def model_card(card: dict) -> str:
    """README.md of the exported folder: what it is, how good, from which data, how to use it."""
    rows = _figure_rows(card)
    steps = card.get("num_inference_steps", 1)
    timesteps = card.get("timesteps")
    call = f"timesteps={timesteps}" if timesteps else f"num_inference_steps={steps}"
    onnx = ("""`onnx/model.onnx` is the whole one-step generator (onnxruntime, no torch): inputs `noise` (N, C, H, W)
float32 standard normal and `class_labels` (N,) int64, output `images` (N, C, H, W) in [-1, 1].

```python
import numpy as np, onnxruntime as ort
sess = ort.InferenceSession("onnx/model.onnx", providers=["CPUExecutionProvider"])
noise = np.random.default_rng(0).standard_normal((8, *sess.get_inputs()[0].shape[1:]), dtype=np.float32)
images = sess.run(None, {"noise": noise, "class_labels": np.arange(8) % NUM_CLASSES})[0]
```""".replace("NUM_CLASSES", str(card.get("num_classes", 10))) if card.get("onnx", not timesteps) else
            "No ONNX copy: ONNX export covers one-step students so far." if timesteps else
            "No ONNX copy: export.onnx was off.")
    return f"""---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags: [fewstep, distillation, {card.get('method', 'dmd2')}, consistency-model-pipeline]
---
# {card.get('name', 'fewstep student')}

A {steps}-step class-conditional generator distilled with **{card.get('method', 'dmd2')}** from a
{card.get("teacher_nfe", "?")}-NFE teacher by fewstep - loads with stock
diffusers, no project code.

```python
import torch
from diffusers import ConsistencyModelPipeline

pipe = ConsistencyModelPipeline.from_pretrained("<this folder>")
out = pipe(batch_size=8, class_labels=torch.arange(8) % {card.get('num_classes', 10)},
           {call}, generator=torch.Generator().manual_seed(0))
out.images[0].save("sample.png")
```

{onnx}

{ctm_section(card)}Classes (label i): {', '.join(map(str, card.get('class_names', [])))}. Label {card.get('num_classes', '?')}
is the null class (classifier-free guidance).

## Figures
| metric | value |
|---|---|
{rows}

{_provenance(card)}"""


def ctm_section(card: dict) -> str:
    """A CTM student's extra paragraph: what stock diffusers runs, and gamma-sampling through the project."""
    if card.get("method") != "ctm":
        return ""
    from components.diffusion.noise_schedule import student_sigmas

    recipe = card.get("sampling", {})
    lo, hi = card.get("sigma_range", (0.002, 80.0))
    four = cm_timesteps([float(v) for v in student_sigmas(4, lo, hi)], lo, hi)
    return f"""## Consistency Trajectory Model: any step count, any gamma
This is one CTM student G(x_t, t, s). `unet/` is its jump to s = 0 (a consistency model), so stock
diffusers runs 1 step and consistency multistep (gamma = 1), e.g. 4 steps on the 1000-point grid:

```python
from diffusers import CMStochasticIterativeScheduler
pipe.scheduler = CMStochasticIterativeScheduler.from_config(pipe.scheduler.config, num_train_timesteps=1000,
                                                            clip_denoised=False)
out = pipe(batch_size=8, class_labels=torch.arange(8), timesteps={four}, num_inference_steps=None)
```
Long jumps and other gammas need G(x_t, t, s) for s > 0: its embedding of s is `s_embedding.safetensors`,
which only fewstep's loader reads:

```python
from components.diffusion import load_denoiser
from components.diffusion.generate import balanced_labels, generate

student = load_denoiser("<this folder>").with_sampling(steps=4, gamma=0.5)
images = generate(student, balanced_labels(8, {card.get('num_classes', 10)}), seed=0).images   # [-1, 1]
```
This export's default recipe: {recipe.get('sampler', 'gamma')}-sampling, {len(recipe.get('sigmas', [0, 0])) - 1} step(s),
gamma {recipe.get('gamma', 0)}.

"""


GRID = 1000   # the multi-step scheduler's num_train_timesteps: DMD2's T (distill.num_train_timesteps)


def cm_timesteps(sigmas: list[float], sigma_min: float, sigma_max: float) -> list[int]:
    """The CMStochasticIterativeScheduler `timesteps` (descending) whose Karras sigmas are the student's."""
    from components.diffusion import karras_sigmas

    grid = karras_sigmas(GRID, sigma_min, sigma_max, append_zero=False).double()   # position t -> sigma
    positions = []
    for s in sigmas[:-1]:
        t = int((grid - s).abs().argmin())
        if abs(float(grid[t]) - s) > 1e-4 * s:
            raise ConfigError(f"export: student sigma {s} is not on the {GRID}-point Karras grid "
                              f"[{sigma_min}, {sigma_max}] (expected distill.num_train_timesteps = {GRID})")
        positions.append(t)
    return sorted(positions, reverse=True)


def export_student(student: EDMDenoiser, target: str | os.PathLike, card: dict | None = None,
                   overwrite: bool = False, onnx: bool = True) -> Path:
    """Write the stock-diffusers folder for a few-step EDM student (temp folder, then rename). One step:
    num_inference_steps=1 (+ ONNX). K steps: the student's sigmas lie on the T=1000 Karras grid, which is
    CMStochasticIterativeScheduler's grid for num_train_timesteps=1000, so `timesteps=[...]` (in the
    model card and model_index's README) replays them; clip_denoised=False as in the project's sampler."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline

    if isinstance(student, GuidedDenoiser):
        return export_guided(student, target, card, overwrite, onnx)
    if isinstance(student, RoutedDenoiser):
        return export_routed(student, target, card, overwrite, onnx)
    if isinstance(student, CascadeDenoiser):
        return export_cascade(student, target, card, overwrite, onnx)
    if not isinstance(student, EDMDenoiser):
        raise ConfigError(f"export: a {student.kind!r} student cannot be written as a ConsistencyModelPipeline "
                          "(expected EDM preconditioning)")
    sigmas = [float(s) for s in student.sampling["sigmas"]]
    timesteps = cm_timesteps(sigmas, student.sigma_min, sigmas[0]) if len(sigmas) > 2 else None
    target = check_export_target(target, overwrite)
    with atomic_dir(target) as tmp:
        scheduler = CMStochasticIterativeScheduler(num_train_timesteps=GRID if timesteps else 40,
                                                   sigma_min=student.sigma_min, sigma_max=sigmas[0],
                                                   sigma_data=student.sigma_data, rho=7.0,
                                                   clip_denoised=timesteps is None)
        ConsistencyModelPipeline(unet=student.unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        (tmp / DENOISER_FILE).write_text(json.dumps(student.config(), indent=1))
        if isinstance(student, CTMDenoiser):                 # G for s > 0 (gamma-sampling) with fewstep's loader
            from safetensors.torch import save_file

            save_file(student.s_embed.state_dict(), str(tmp / S_EMBEDDING_FILE))
        onnx = onnx and timesteps is None                    # ONNX covers one-step students
        if onnx:
            export_onnx(student, tmp / "onnx" / "model.onnx")
        (tmp / "README.md").write_text(model_card({**(card or {}), "num_classes": student.num_classes, "onnx": onnx,
                                                   "num_inference_steps": len(sigmas) - 1, "timesteps": timesteps,
                                                   "sampling": student.sampling,
                                                   "sigma_range": (student.sigma_min, sigmas[0])}))
    return target


def export_guided(student: GuidedDenoiser, target: str | os.PathLike, card: dict | None = None,
                  overwrite: bool = False, onnx: bool = True) -> Path:
    """A guided (w-conditioned) student: fewstep's denoiser folder (unet/ + scheduler/ + denoiser.json with its DDIM
    recipe + w_embedding.safetensors) and, with `onnx`, onnx/denoiser.onnx = x_eta(z_t, t, w) with w an input.
    No stock diffusers pipeline samples it: the UNet alone has no w input (w enters through the embedding beside
    it), and ConsistencyModelPipeline re-noises between steps where this student takes deterministic DDIM steps.
    The model card says so and gives the two ways that do run it. Temp folder, then rename."""
    from components.diffusion import save_denoiser

    target = check_export_target(target, overwrite)
    with atomic_dir(target) as tmp:
        save_denoiser(student, tmp)
        if onnx:
            export_guided_onnx(student, tmp / "onnx" / "denoiser.onnx")
        (tmp / "README.md").write_text(guided_card({**(card or {}), "num_classes": student.num_classes, "onnx": onnx,
                                                    "sampling": student.sampling}))
    return target


def guided_card(card: dict) -> str:
    """README.md of a guided student's folder: how to sample it at any w (fewstep's loader; ONNX in numpy)."""
    sigmas = [float(v) for v in card.get("sampling", {}).get("sigmas", [80.0, 0.0])]
    steps, n_cls = len(sigmas) - 1, card.get("num_classes", 10)
    rows = _figure_rows(card)
    onnx = f"""`onnx/denoiser.onnx` is one network evaluation x_eta(z_t, t, w) (onnxruntime, no torch): inputs `sample`
(N, C, H, W), `sigma` (N,), `class_labels` (N,) int64 and `w` (N,); output `denoised`. Deterministic DDIM
on this student's levels:

```python
import numpy as np, onnxruntime as ort
sess = ort.InferenceSession("onnx/denoiser.onnx", providers=["CPUExecutionProvider"])
sigmas, w, labels = {[round(v, 6) for v in sigmas]}, 1.0, np.arange(8) % {n_cls}
x = np.random.default_rng(0).standard_normal((8, *sess.get_inputs()[0].shape[1:]), dtype=np.float32) * sigmas[0]
for t, s in zip(sigmas[:-1], sigmas[1:]):
    x0 = sess.run(None, {{"sample": x, "sigma": np.full(8, t, np.float32), "class_labels": labels,
                         "w": np.full(8, w, np.float32)}})[0]
    x = x0 + np.float32(s / t) * (x - x0)
images = x.clip(-1, 1)
```""" if card.get("onnx") else "No ONNX copy: export.onnx was off."
    return f"""---
library_name: fewstep
tags: [fewstep, distillation, guided-distillation, progressive-distillation]
---
# {card.get('name', 'fewstep guided student')}

A {steps}-step class-conditional generator with the guidance strength **w as an input** (one network
evaluation per step at any w, where the classifier-free-guided teacher takes two), distilled by fewstep
with guided distillation (Meng et al. 2022) and progressive halvings from a {card.get("teacher_nfe", "?")}-NFE teacher.
w = 0 is the conditional model; the CFG scale is 1 + w.

**Stock diffusers cannot sample it**: `unet/` is a stock UNet2DModel, but w enters through
`w_embedding.safetensors` beside it, and no stock pipeline takes deterministic DDIM steps on this
EDM-preconditioned denoiser (ConsistencyModelPipeline re-noises between steps). Two ways run it:

```python
from components.diffusion import load_denoiser                    # fewstep's loader
from components.diffusion.generate import balanced_labels, generate

student = load_denoiser("<this folder>")
images = generate(student, balanced_labels(8, {n_cls}), seed=0, guidance_scale=1 + 1.0).images   # w = 1, [-1, 1]
```

{onnx}

Classes (label i): {', '.join(map(str, card.get('class_names', [])))}. Label {n_cls} is the null class.

## Figures (w = 0)
| metric | value |
|---|---|
{rows}

{_provenance(card)}"""


def export_routed(student: RoutedDenoiser, target: str | os.PathLike, card: dict | None = None,
                  overwrite: bool = False, onnx: bool = True) -> Path:
    """A routed bundle (Multi-Student Distillation): student_<k>/ = export_student's stock-diffusers folder of each
    student (its own card; onnx/model.onnx for one-step students), routing.json (class subsets, in order), and a
    README.md whose loader needs only diffusers. Temp folder, then rename."""
    target = check_export_target(target, overwrite)
    card = dict(card or {})
    with atomic_dir(target) as tmp:
        for k, (s, subset) in enumerate(zip(student.students, student.subsets)):
            export_student(s, tmp / f"student_{k}", {**card, "name": f"{card.get('name', 'fewstep student')} {k} of "
                                                     f"{len(student.students)} (classes {subset})"}, onnx=onnx)
        (tmp / ROUTING_FILE).write_text(json.dumps(student.config(), indent=1))
        sigmas = [float(v) for v in student.sampling["sigmas"]]
        timesteps = cm_timesteps(sigmas, student.sigma_min, sigmas[0]) if len(sigmas) > 2 else None
        (tmp / "README.md").write_text(routed_card({**card, "num_classes": student.num_classes, "subsets": student.subsets,
                                                    "timesteps": timesteps, "onnx": onnx and timesteps is None}))
    return target


def routed_card(card: dict) -> str:
    """README.md of a routed bundle: what it is, the diffusers-only loader (a mixed batch routed by class and put back
    in order), ONNX per student, figures of the bundle as one model, provenance."""
    subsets, n_cls = card.get("subsets", []), card.get("num_classes", 10)
    timesteps = card.get("timesteps")
    call = f"timesteps={timesteps}, num_inference_steps=None" if timesteps else "num_inference_steps=1"
    rows = "\n".join(f"| `student_{k}/` | {', '.join(map(str, s))} |" for k, s in enumerate(subsets))
    onnx = ("Each one-step student also has `student_<k>/onnx/model.onnx` (onnxruntime, no torch; its own card "
            "shows the call)." if card.get("onnx") else "No ONNX copies: ONNX export covers one-step students.")
    same = ("" if timesteps else " With one step the images equal fewstep's sampler's run per student with the "
            "same seeds (`generate(student_k, labels of its rows, seed + k)`).")
    return f"""---
library_name: diffusers
tags: [fewstep, distillation, msd, multi-student-distillation, consistency-model-pipeline]
---
# {card.get('name', 'fewstep MSD bundle')}

{len(subsets)} class-conditional few-step students distilled with **Multi-Student Distillation** (Song et al. 2024;
DMD2's losses per class subset) from a {card.get("teacher_nfe", "?")}-NFE teacher by fewstep. Each student owns
a subset of the classes; `routing.json` says which. Every `student_<k>/` is a stock diffusers
`ConsistencyModelPipeline` folder; this loader needs only diffusers and torch:

```python
import json, torch
from diffusers import ConsistencyModelPipeline

folder = "<this folder>"
table = json.load(open(f"{{folder}}/routing.json"))
pipes = [ConsistencyModelPipeline.from_pretrained(f"{{folder}}/{{name}}") for name in table["students"]]
owner = {{c: k for k, subset in enumerate(table["subsets"]) for c in subset}}


def sample(class_labels, seed=0):
    \"\"\"Images (N, H, W, C) in [0, 1] for any mix of labels, in the order given.\"\"\"
    labels = torch.as_tensor(class_labels)
    images = None
    for k, pipe in enumerate(pipes):                 # student k: its rows, its noise from seed + k
        rows = torch.tensor([i for i, c in enumerate(labels.tolist()) if owner[c] == k], dtype=torch.long)
        if len(rows):
            out = pipe(batch_size=len(rows), class_labels=labels[rows], generator=torch.Generator().manual_seed(seed + k),
                       {call}, output_type="np").images
            images = images if images is not None else torch.zeros((len(labels), *out.shape[1:]))
            images[rows] = torch.from_numpy(out)
    return images


images = sample([0, 5, 3, 3, 9], seed=0)
```
{same}

{onnx}

| student | classes |
|---|---|
{rows}

Label {n_cls} is the null class of each student (classifier-free guidance); the router takes labels 0..{n_cls - 1}.
fewstep's own loader reads the bundle as one model: `components.diffusion.load_denoiser("<this folder>")`.

## Figures (the bundle as one model)
| metric | value |
|---|---|
{_figure_rows(card)}

{_provenance(card)}"""


def export_cascade(student: CascadeDenoiser, target: str | os.PathLike, card: dict | None = None,
                   overwrite: bool = False, onnx: bool = True) -> Path:
    """A LowDiff cascade: fewstep's folder (unet/ with 2C input channels, res_embedding.safetensors, cascade.json with
    the levels and the sampling recipe), with `onnx` one ONNX file per level (onnx/level_<r>.onnx), and a README.md
    whose loader is three lines of fewstep. No stock diffusers pipeline drives a cascade (the card says so). Temp
    folder, then rename."""
    from components.diffusion import save_denoiser

    target = check_export_target(target, overwrite)
    with atomic_dir(target) as tmp:
        save_denoiser(student, tmp)
        if onnx:
            export_cascade_onnx(student, tmp / "onnx")
        (tmp / "README.md").write_text(cascade_card({**(card or {}), "num_classes": student.num_classes,
                                                     "sampling": student.sampling, "onnx": onnx}))
    return target


def cascade_card(card: dict) -> str:
    """README.md of a LowDiff cascade folder: what it is, the three-line loader, its levels, figures, provenance."""
    recipe, n_cls = card.get("sampling", {}), card.get("num_classes", 10)
    levels = recipe.get("levels", [])
    rows = "\n".join(f"| {lv['resolution']}x{lv['resolution']} | {lv['sigma_start']:g} | {lv['steps']} | {n} |"
                     for lv, n in zip(levels, level_nfe(recipe))) if levels else ""
    onnx = ("""`onnx/level_<r>.onnx` is one network evaluation at each level (onnxruntime, no torch): inputs `sample`
(N, C, r, r), `lowres` (N, C, r, r: the level below, upsampled by repeating pixels; not at the lowest level), `sigma`
(N,) and `class_labels` (N,) int64; output `denoised`. fewstep's `components.onnx_export.run_cascade_onnx(folder,
recipe, noise, level_noise, labels)` runs the sampler above on them in numpy (the recipe is `sampling` in
`cascade.json`)."""
            if card.get("onnx") else "No ONNX copy: export.onnx was off.")
    return f"""---
library_name: fewstep
tags: [fewstep, lowdiff, cascade]
---
# {card.get('name', 'fewstep LowDiff cascade')}

A class-conditional **LowDiff cascade** (Xu et al. 2025) trained by fewstep: ONE network generates at low
resolution first, then refines the upsampled result at each higher resolution, starting from it noised to an
intermediate level, so fewer network evaluations run at full resolution.

**Stock diffusers cannot drive it**: `unet/` is a stock UNet2DModel, but it takes the upsampled lower level as a
second channel group and a resolution embedding (`res_embedding.safetensors`) beside it, and no diffusers pipeline
runs a cascade. fewstep's loader does, in three lines:

```python
from components.diffusion import load_denoiser                    # fewstep's loader
from components.diffusion.generate import balanced_labels, generate

images = generate(load_denoiser("<this folder>"), balanced_labels(8, {n_cls}), seed=0).images   # [-1, 1]
```

| level | starts at sigma | Heun steps | NFE |
|---|---|---|---|
{rows}

{onnx}

Classes (label i): {', '.join(map(str, card.get('class_names', [])))}. Label {n_cls} is the null class.

## Figures
| metric | value |
|---|---|
{_figure_rows(card)}

{_provenance(card)}"""


def card_fields(method: str, metrics: dict, class_names: list, data_path: str, data_md5: str, config: dict,
                git_commit: str = "") -> dict:
    """The model card's facts, the same for both engines (ZenML's export step and the DVC stage)."""
    return {"method": method, "metrics": metrics, "teacher_nfe": metrics["teacher_nfe"], "class_names": class_names,
            "data_path": data_path, "data_md5": data_md5, "git_commit": git_commit, "config": config,
            "name": f"fewstep {method.upper()} student"}


def export_if_passed(student: EDMDenoiser, target: str | os.PathLike, decision_passed: bool, reasons: list[str],
                     card: dict, overwrite: bool = False, onnx: bool = True) -> bool:
    """The gated export: on a pass the stock-diffusers folder, on a rejection a folder holding only
    REJECTED.md with the gate's reasons (so a rejected student is never deployable). -> exported?"""
    if not decision_passed:
        with atomic_dir(check_export_target(target, overwrite)) as tmp:
            (tmp / "REJECTED.md").write_text("Not exported: " + "; ".join(reasons) + "\n")
        return False
    export_student(student, target, card, overwrite=overwrite, onnx=onnx)
    return True
