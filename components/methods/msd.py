"""Multi-Student Distillation (Song et al. 2024, arXiv 2410.23274; ../shared/PAPERS.md, MSD).

The classes are split into K subsets; one student per subset is distilled with DMD2's losses
(components/methods/dmd2.py) on its subset only - the generator's labels, the real images of the GAN term and the
fake score's training data all come from the subset (the trainer draws batches from `self.data`, which holds only
the subset's images) - and a router (components/diffusion/routed.py) sends each class label to its student. The
teacher (the real score) is shared. No public code exists; this follows the paper's description as summarised in
PAPERS.md.

Same-size students (distill.student_channels unset) are DMD2 students from a copy of the teacher: one stage,
`dmd2`. Smaller students (student_channels: narrower / shallower UNets) take the paper's three stages, each a
versioned artifact of its own (msd_pipeline: one distill step per stage; `branches` below):
    tsm  teacher score matching: the new small network trained as a denoiser to match the teacher's outputs
         D_teacher(x_sigma, sigma, c) on noised real images of its subset (EDM weighting, EDM training sigmas);
    dm   distribution matching (DMD2 without the GAN: w_gen = w_D = 0) from the tsm student;
    adv  distribution matching + the adversarial term (DMD2 as configured) from the dm student.
A fan-out branch is one subset's stages in order; the branches are independent (msd_pipeline, dvc.yaml)."""
from __future__ import annotations

import copy
from typing import Literal, Optional

import torch
from pydantic import Field

from components.config import ConfigError
from components.data import ImageDataset
from components.diffusion.denoiser import Denoiser, EDMDenoiser
from components.diffusion.noise_schedule import edm_training_sigmas
from components.diffusion.routed import RoutedDenoiser, check_partition
from components.methods.dmd2 import DMD2, DMD2Config
from components.methods.interface import Method
from components.training import ema_model

STAGES = ("dmd2", "tsm", "dm", "adv")


class MSDConfig(DMD2Config):
    method: Literal["msd"] = "msd"
    students: int = Field(4, ge=1)          # K: students, one per class subset
    partition: Optional[tuple[tuple[int, ...], ...]] = None  # explicit class subsets (K of them, every class in
                                           # exactly one); None: balanced by the training split's class counts
    student_channels: Optional[tuple[int, ...]] = None  # smaller students: their UNet widths per level (None: each
                                           # student is a copy of the teacher, one dmd2 stage)
    student_layers_per_block: Optional[int] = Field(None, ge=1)  # smaller students: ResNet blocks per level
                                           # (None: the teacher's)
    tsm_iterations: int = Field(1000, ge=1)  # smaller students, stage 1: teacher score matching iterations
    dm_iterations: int = Field(300, ge=1)   # smaller students, stage 2: distribution matching without the GAN;
                                           # stage 3 (adv) runs distill.iterations
    lr_tsm: float = Field(1e-3, gt=0)       # AdamW lr of teacher score matching
    # set per fan-out branch by `branches` (msd_pipeline, the DVC foreach stage), not by hand:
    subset: Optional[int] = Field(None, ge=0)   # the subset this run trains
    stage: Literal["dmd2", "tsm", "dm", "adv"] = "dmd2"


def class_subsets(counts: list[int], students: int, explicit=None) -> list[list[int]]:
    """K subsets of the classes 0..len(counts)-1. Explicit ones are checked (K of them, every class in exactly one,
    none empty); otherwise balanced by class count: classes in decreasing count, each to the subset with the
    fewest images so far (ties: fewer classes, then the lower index)."""
    n = len(counts)
    if explicit is not None:
        if len(explicit) != students:
            raise ConfigError(f"config field 'distill.partition': {len(explicit)} subset(s) but distill.students is "
                              f"{students}; give one subset per student")
        return check_partition(explicit, n)
    if students > n:
        raise ConfigError(f"config field 'distill.students': {students} students for {n} classes; at most one "
                          "student per class")
    subsets: list[list[int]] = [[] for _ in range(students)]
    totals = [0] * students
    for c in sorted(range(n), key=lambda c: (-counts[c], c)):
        k = min(range(students), key=lambda k: (totals[k], len(subsets[k]), k))
        subsets[k].append(c)
        totals[k] += counts[c]
    return [sorted(s) for s in subsets]


def partition(cfg: MSDConfig, data: ImageDataset) -> list[list[int]]:
    """The run's subsets on this data (class counts of the training split)."""
    counts = torch.bincount(data.split("train")[1].long(), minlength=data.num_classes).tolist()
    return class_subsets(counts, cfg.students, cfg.partition)


def subset_data(data: ImageDataset, classes: list[int]) -> ImageDataset:
    """The images (both splits) of these classes; labels keep their global values (one class embedding for all)."""
    keep = torch.isin(data.labels.long(), torch.tensor(classes, dtype=torch.long))
    return ImageDataset(data.images[keep], data.labels[keep], data.is_eval[keep], data.class_names, data.source,
                        {**data.meta, "msd_classes": list(classes)})


def stages(cfg: MSDConfig) -> list[tuple[str, dict]]:
    """One subset's stages as (name, distill config) in order: `dmd2` for same-size students; `tsm`, `dm`, `adv`
    for smaller ones. Checkpoint FIDs are off in a branch (a subset's student samples only its classes: the routed
    bundle is what evaluation scores)."""
    base = {**cfg.model_dump(mode="json"), "fid_every": 0}
    if cfg.student_channels is None:
        return [("dmd2", {**base, "stage": "dmd2"})]
    return [("tsm", {**base, "stage": "tsm", "iterations": cfg.tsm_iterations}),
            ("dm", {**base, "stage": "dm", "iterations": cfg.dm_iterations, "w_gen": 0.0, "w_D": 0.0}),
            ("adv", {**base, "stage": "adv"})]


def branches(cfg: MSDConfig) -> list[list[tuple[str, dict]]]:
    """The fan-out: per subset k (0..K-1) its stages, each config with subset k. Branches share nothing but the
    teacher and the data, so they run in parallel (Kubeflow) or in any order (DVC, one machine)."""
    return [[(name, {**c, "subset": k}) for name, c in stages(cfg)] for k in range(cfg.students)]


def route(students: list[Denoiser], cfg: MSDConfig, data: ImageDataset) -> RoutedDenoiser:
    """The join: the K branches' students behind one router, subset k -> student k."""
    if len(students) != cfg.students:
        raise ConfigError(f"config field 'distill.students': {cfg.students} subsets but {len(students)} students")
    return RoutedDenoiser(students, partition(cfg, data))


def teacher_score_matching_loss(x0_student: torch.Tensor, x0_teacher: torch.Tensor, sigma: torch.Tensor,
                                sigma_data: float) -> torch.Tensor:
    """MSD stage 1: lambda(sigma) ||D_student(x_sigma) - D_teacher(x_sigma)||^2 with EDM's weight
    lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2 (the teacher's own training weight), per sample."""
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return weight * ((x0_student - x0_teacher) ** 2).mean(dim=(1, 2, 3))


class MSD(DMD2):
    """One student of one subset (cfg.subset) at one stage (cfg.stage); `init` is the previous stage's student."""

    Config = MSDConfig

    def __init__(self, teacher: Denoiser, cfg: MSDConfig, data: ImageDataset, pairs=None,
                 init: Optional[Denoiser] = None):
        subsets = partition(cfg, data)
        if cfg.subset is None:
            raise ConfigError("config field 'distill.subset': an MSD run trains one subset; msd_pipeline and the DVC "
                              "foreach stage set it per branch (components/methods/msd.py, branches)")
        if cfg.subset >= len(subsets):
            raise ConfigError(f"config field 'distill.subset': {cfg.subset} is not a subset of {len(subsets)} "
                              f"(0..{len(subsets) - 1})")
        self.classes = subsets[cfg.subset]
        sub = subset_data(data, self.classes)
        if pairs is not None:                                 # the regression pairs of this subset's labels only
            keep = torch.isin(pairs.labels.long(), torch.tensor(self.classes))
            pairs = copy.copy(pairs)
            pairs.noise, pairs.labels, pairs.images = pairs.noise[keep], pairs.labels[keep], pairs.images[keep]
        small = cfg.student_channels is not None
        if small == (cfg.stage == "dmd2"):
            raise ConfigError(f"config field 'distill.stage': {cfg.stage!r} with distill.student_channels "
                              f"{cfg.student_channels}; same-size students take the dmd2 stage, smaller ones tsm, "
                              "dm, adv")
        if cfg.stage in ("dm", "adv") and init is None:
            raise ConfigError(f"config field 'distill.stage': {cfg.stage} starts from the previous stage's student; "
                              "none was given")
        if cfg.stage != "tsm":
            super().__init__(teacher, cfg, sub, pairs, init=init)
            return
        Method.__init__(self, teacher, cfg, sub, pairs)
        self._init_tsm(teacher)

    def _init_tsm(self, teacher: Denoiser) -> None:
        """Stage 1: a new, smaller EDM denoiser (seeded init) and the frozen teacher it learns from."""
        from components.nets import build_unet

        cfg, dev, t = self.cfg, self.device, teacher.unet.config
        C, H, _ = self.data.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 3)
            unet = build_unet(H, C, teacher.num_classes, cfg.student_channels,
                              cfg.student_layers_per_block or t.layers_per_block, t.norm_num_groups)
        self.G = EDMDenoiser(unet, teacher.num_classes, teacher.sigma_min, teacher.sigma_max,
                             teacher.sigma_data).to(dev).train()
        self.real = copy.deepcopy(teacher).to(dev).eval().requires_grad_(False)
        self.teacher_sampling = dict(teacher.sampling)
        self.G_ema = ema_model(self.G, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.fake = self.D = self.opt_fake = self.sched_fake = None
        self.opt_G = torch.optim.AdamW(self.G.parameters(), lr=cfg.lr_tsm, weight_decay=cfg.weight_decay)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, lambda s: 1.0)
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.cfg.stage != "tsm":
            return super().train_step(batch)
        logs: dict[str, float] = {}
        x0, y = batch["real"].to(self.device), batch["class_labels"].to(self.device)
        sigma = self.world.shard(edm_training_sigmas(self.world.global_size(len(x0)), self.real_P_mean,
                                                      self.real_P_std, generator=self.rng)).to(self.device)
        x_t = x0 + sigma.view(-1, 1, 1, 1) * self._randn(x0.shape)
        with torch.no_grad(), self._autocast():
            target = self.real(x_t, sigma, y).float()
        loss = teacher_score_matching_loss(self._G(x_t, sigma, y), target, sigma, self.G.sigma_data).mean()
        if self._update(loss, list(self.G.parameters()), self.opt_G, self.sched_G, "G", logs):
            self._ema()
        logs["loss_tsm"] = loss.item()
        return self._finish(logs)

    # EDM's training noise (TeacherConfig's defaults): where the teacher itself learned to denoise
    real_P_mean, real_P_std = -1.2, 1.2

    def student(self) -> Denoiser:
        if self.cfg.stage != "tsm":
            return super().student()
        G = copy.deepcopy(self.G_ema.module if self.G_ema is not None else self.G).cpu().eval()
        G.requires_grad_(False)
        G.sampling = copy.deepcopy(self.teacher_sampling)     # a denoiser: sampled as its teacher is
        return G

    def checkpoint_parts(self) -> dict:
        if self.cfg.stage != "tsm":
            return super().checkpoint_parts()
        return {"G": self.G, "G_ema": self.G_ema, "opt_G": self.opt_G, "sched_G": self.sched_G}



def merged_history(histories: list[list[list[dict]]]) -> list[dict]:
    """One history for the K branches (histories[k] = branch k's stage histories, in order): every series
    suffixed by its student, 'loss_dm[s2]'; the iteration counts on through a branch's stages."""
    rows: dict[int, dict] = {}
    for k, branch in enumerate(histories):
        offset = 0
        for h in branch:
            for row in h:
                it = offset + int(row.get("iteration", 0))
                rows.setdefault(it, {"iteration": it}).update(
                    {f"{key}[s{k}]": v for key, v in row.items() if key != "iteration"})
            offset += int(h[-1].get("iteration", 0)) if h else 0
    return [rows[i] for i in sorted(rows)]


def fan_out_seconds(histories: list[list[list[dict]]]) -> dict:
    """The fan-out's distillation wall-clock from the branches' stage histories (a stage's last row holds its
    'distill_seconds', steps/distill.py): in turn on one machine (the sum) and in parallel (the longest branch)."""
    per_branch = [sum(float(h[-1].get("distill_seconds", 0.0)) for h in branch if h) for branch in histories]
    return {"fan_out_seconds_one_machine": sum(per_branch),
            "fan_out_seconds_longest_branch": max(per_branch, default=0.0)}


def group_by_branch(items: list, cfg: MSDConfig) -> list[list]:
    """A flat list in branch order (K branches x their stages, as `branches` yields them) -> one list per branch."""
    n = len(stages(cfg))
    if len(items) != cfg.students * n:
        raise ValueError(f"expected {cfg.students} branches x {n} stage(s) = {cfg.students * n} items, got {len(items)}")
    return [items[k * n:(k + 1) * n] for k in range(cfg.students)]


__all__ = ["MSD", "MSDConfig", "STAGES", "branches", "class_subsets", "fan_out_seconds", "group_by_branch", "merged_history", "partition",
           "route", "stages", "subset_data",
           "teacher_score_matching_loss"]
