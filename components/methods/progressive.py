"""Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512), stage 2 of guided distillation
(Meng et al. 2022; ../shared/PAPERS.md): ONE halving N -> N/2 of a w-conditioned DDIM student.

The teacher is the previous student x_eta (GuidedDenoiser, sampled with DDIM on N steps t_0 > ... > t_N = 0;
the first teacher is the guided stage's student). The new student starts as a copy of it and learns to
do in one DDIM step t -> t'' what the teacher does in two, t -> t' -> t'' (t = t_{2i}, t' = t_{2i+1},
t'' = t_{2i+2}, i ~ U{0 .. N/2 - 1}):

    z_t = x + t eps;   z_t'  = DDIM(z_t,  x_eta(z_t,  t,  w), t  -> t');
                       z_t'' = DDIM(z_t', x_eta(z_t', t', w), t' -> t'');
    x~ = (z_t'' - (t''/t) z_t) / (1 - t''/t)       (the x~ whose one DDIM step t -> t'' lands on z_t'')
    L(eta') = E [ max(SNR(t), 1) || x_eta'(z_t, t, w) - x~ ||^2 ],   SNR(t) = sigma_data^2 / t^2,

Our departure (`teacher_solver: heun`, the chain's `first_halving_solver`): the teacher's two steps taken
with Heun's 2nd-order step instead of DDIM's Euler step (2 NFE each), the target x~ unchanged. The paper
starts its chains at N = 1024+ steps, where DDIM is close to the ODE's solution; a CPU budget starts at
N = 16, where DDIM with guidance is far from it (on the digits at w = 1 the CFG teacher sampled with 16
DDIM steps is far worse than with its 18 Heun steps), so the first halving learns the Heun trajectory
instead. Later teachers are distilled students, whose single DDIM steps are what they were trained for.

with DDIM(z, x0, t -> s) = x0 + (s/t)(z - x0), the Euler step of the probability-flow ODE on this EDM
(VE) schedule (components/diffusion/samplers.py: ddim_step, ddim_target). w stays an input: every
halving's student takes it. The student's levels are every other level of its teacher's, so a chain
N -> N/2 -> ... keeps the guided stage's Karras grid. `halving_plan` is the chain's bookkeeping; each
halving is one distill run (one artifact per halving in the pipeline).

Not checked against an official implementation (google-research/progressive_distillation is not
stored here); this follows the paper's Algorithm 2 and PAPERS.md.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field

from components.config import ConfigError, parse_section
from components.data import ImageDataset
from components.diffusion import GuidedDenoiser
from components.diffusion.denoiser import Denoiser
from components.diffusion.samplers import ddim_step, ddim_target, heun_step
from components.methods.guided import CHAIN_KEYS, GuidedConfig, GuidedDistillation, WStudentConfig, halving_plan


class ProgressiveConfig(WStudentConfig):
    method: Literal["progressive"] = "progressive"
    target_steps: int = Field(4, ge=1)       # the step count this run's student samples in (its teacher's / 2)
    # the solver of the teacher's two steps t -> t' -> t'': "ddim" (the paper) or "heun" (2nd order, 2 NFE per
    # step; ours). The chain sets it for its first halving from distill.first_halving_solver
    teacher_solver: Literal["ddim", "heun"] = "ddim"


def teacher_sigmas(teacher: Denoiser) -> list[float]:
    """The DDIM levels t_0 > ... > t_N = 0 of a progressive teacher; N must be even (one-line error else)."""
    recipe = getattr(teacher, "sampling", {}) or {}
    if not isinstance(teacher, GuidedDenoiser) or recipe.get("sampler") != "ddim":
        raise ConfigError("distill.method progressive: the teacher must be a guided student sampled with DDIM "
                          f"(kind 'guided', sampler 'ddim'); got kind {getattr(teacher, 'kind', '?')!r} with sampler "
                          f"{recipe.get('sampler')!r} - run distill.method guided first")
    sigmas = [float(v) for v in recipe["sigmas"]]
    N = len(sigmas) - 1
    if N < 2 or N % 2:
        raise ConfigError(f"distill.method progressive: the teacher samples in {N} DDIM step(s), which cannot be "
                          "halved (expected an even count >= 2: distill.sampling_steps of the guided stage)")
    return sigmas


def stage_one(cfg: GuidedConfig) -> dict:
    """The guided stage's own distill config (plain data): the chain keys (target_steps, halving) dropped, so a
    longer or shorter chain leaves stage 1's config - and its cached student - unchanged."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in CHAIN_KEYS}


def halvings(cfg: GuidedConfig) -> list[tuple[int, dict]]:
    """The chain after stage 1 -> [(student steps, its distill config as plain data)], one per halving:
    the keys stage 1 shares with ProgressiveConfig, then distill.halving's overrides. A halving's config
    names its own step count (target_steps = N/2 of its teacher), not the chain's end, so asking for one
    more halving leaves the earlier ones' configs (and cached students) as they were."""
    if cfg.target_steps is None:
        return []
    shared = {k: v for k, v in stage_one(cfg).items() if k in ProgressiveConfig.model_fields and k != "method"}
    unknown = sorted(set(cfg.halving) - set(ProgressiveConfig.model_fields) - {"method"})
    if unknown:
        raise ConfigError(f"config field 'distill.halving.{unknown[0]}': not a key of a halving's config "
                          f"(valid: {', '.join(k for k in ProgressiveConfig.model_fields if k != 'method')})")
    if cfg.halving.get("method", "progressive") != "progressive" or "target_steps" in cfg.halving:
        key = "method" if "method" in cfg.halving else "target_steps"
        raise ConfigError(f"config field 'distill.halving.{key}': set by the chain (distill.target_steps), "
                          "not per halving")
    out = []
    for k, n in enumerate(halving_plan(cfg.sampling_steps, cfg.target_steps)):
        values = {**shared, **cfg.halving, "method": "progressive", "target_steps": n}
        if k == 0 and cfg.first_halving_solver is not None:
            values["teacher_solver"] = cfg.first_halving_solver
        out.append((n, parse_section(ProgressiveConfig, values, "distill.halving").model_dump(mode="json")))
    return out


class Progressive(GuidedDistillation):
    Config = ProgressiveConfig

    def __init__(self, teacher: Denoiser, cfg: ProgressiveConfig, data: ImageDataset, pairs=None):
        self.levels = torch.tensor(teacher_sigmas(teacher), dtype=torch.float32)      # t_0 .. t_N
        super().__init__(teacher, cfg, data, pairs)
        self.levels = self.levels.to(self.device)

    def _init_student(self, teacher: Denoiser) -> GuidedDenoiser:
        return copy.deepcopy(teacher)                                  # eta' starts as eta

    def target(self, x: torch.Tensor, c: torch.Tensor, z: torch.Tensor, w: torch.Tensor):
        N = len(self.levels) - 1
        i = self.world.shard(torch.randint(0, N // 2, (self.world.global_size(len(x)),), generator=self.rng))
        i = i.to(self.device)
        t, t1, t2 = self.levels[2 * i], self.levels[2 * i + 1], self.levels[2 * i + 2]
        z_t = x + t.view(-1, 1, 1, 1) * z
        with torch.no_grad():
            if self.cfg.teacher_solver == "heun":
                D = lambda v, sig: self.teacher.with_w(v, sig, c, w)     # noqa: E731
                z_t2 = heun_step(heun_step(z_t, t, t1, D), t1, t2, D)
            else:
                z_t1 = ddim_step(z_t, self.teacher.with_w(z_t, t, c, w), t, t1)
                z_t2 = ddim_step(z_t1, self.teacher.with_w(z_t1, t1, c, w), t1, t2)
        return z_t, t, ddim_target(z_t, z_t2, t, t2)

    def sampling(self, S: GuidedDenoiser) -> dict:
        """Every other level of the teacher's: N/2 DDIM steps on the same grid."""
        return {"sampler": "ddim", "sigmas": [round(float(v), 6) for v in self.levels[::2].tolist()]}


__all__ = ["Progressive", "ProgressiveConfig", "halving_plan", "halvings", "stage_one", "teacher_sigmas"]
