"""Evaluation protocol: FID against the held-out eval split and the train split, the
real-vs-real floor, class accuracy, NFE and wall-clock - each FID with its feature net,
reference set and sample counts."""
from __future__ import annotations

import torch

from components.config import EvalConfig
from components.data import ImageDataset
from components.diffusion.generate import Generated, balanced_labels, generate
from components.metrics.features import FeatureNet
from components.metrics.fid import FeatureStats, feature_stats, fid
from components.metrics.report import summary


def reference_stats(feature_net: FeatureNet, data: ImageDataset) -> dict[str, FeatureStats]:
    """Feature statistics of the real train and eval splits."""
    out = {}
    for split in ("eval", "train"):
        x, _ = data.split(split)
        out[split] = feature_stats(feature_net.embed(x)[0], f"real-{split}")
    return out


def real_floor(refs: dict[str, FeatureStats], feature_net: FeatureNet) -> dict:
    """FID(train split, eval split): the best a perfect generator of this data could score."""
    return fid(refs["train"], refs["eval"], feature_net.name).as_dict()


def score_samples(gen: Generated, name: str, feature_net: FeatureNet,
                  refs: dict[str, FeatureStats]) -> tuple[dict, FeatureStats]:
    """FID vs eval and train splits, class accuracy; -> (metrics, sample feature stats)."""
    if not torch.isfinite(gen.images).all():
        raise ValueError(f"{name}: generated images contain NaN/inf")
    feats, pred = feature_net.embed(gen.images)
    stats = feature_stats(feats, f"{name}-samples")
    r_eval, r_train = fid(stats, refs["eval"], feature_net.name), fid(stats, refs["train"], feature_net.name)
    return {
        "fid": r_eval.fid, "fid_train": r_train.fid, "fid_detail": r_eval.as_dict(),
        "class_acc": float((pred == gen.labels).float().mean()), "nfe": gen.nfe,
        "sampling_seconds": gen.seconds, "num_samples": len(gen.images),
    }, stats


def evaluate_generator(denoiser, name: str, feature_net: FeatureNet, data: ImageDataset,
                       refs: dict[str, FeatureStats], num_samples: int, seed: int,
                       batch_size: int = 500, progress: bool = False) -> tuple[dict, FeatureStats, Generated]:
    """Sample num_samples class-balanced images with the denoiser's own recipe and score them."""
    labels = balanced_labels(num_samples, data.num_classes)
    gen = generate(denoiser, labels, seed, batch_size, progress=progress, desc=f"sampling {name}")
    metrics, stats = score_samples(gen, name, feature_net, refs)
    return metrics, stats, gen


def evaluate_teacher_model(teacher, data: ImageDataset, feature_net: FeatureNet, cfg: EvalConfig,
                           progress: bool = True) -> tuple[dict, FeatureStats, Generated]:
    """The teacher's figures at its own multi-step sampler, with the real-vs-real floor."""
    from components.diffusion import state_hash

    refs = reference_stats(feature_net, data)
    metrics, stats, gen = evaluate_generator(teacher, "teacher", feature_net, data, refs, cfg.num_samples,
                                             cfg.seed, cfg.batch_size, progress=progress)
    metrics.update(teacher_sha256=state_hash(teacher), real_floor=real_floor(refs, feature_net))
    return metrics, stats, gen


def evaluate_student_model(student, data: ImageDataset, feature_net: FeatureNet, teacher_metrics: dict,
                           teacher_stats: FeatureStats, cfg: EvalConfig,
                           progress: bool = True) -> tuple[dict, Generated]:
    """The student's figures beside the teacher's -> (summary of the run, the student's samples)."""
    refs = reference_stats(feature_net, data)
    student_m, stats, gen = evaluate_generator(student, "student", feature_net, data, refs, cfg.num_samples,
                                               cfg.seed, cfg.batch_size, progress=progress)
    gap = fid(stats, teacher_stats, feature_net.name).as_dict()
    return summary(teacher_metrics, student_m, gap), gen


def fid_on_this_run(generator, data: ImageDataset, feature_net: FeatureNet, cfg: EvalConfig) -> float:
    """FID of any generator (e.g. the production student) on this run's reference statistics."""
    metrics, _, _ = evaluate_generator(generator, "production", feature_net, data, reference_stats(feature_net, data),
                                       cfg.num_samples, cfg.seed, cfg.batch_size)
    return float(metrics["fid"])
