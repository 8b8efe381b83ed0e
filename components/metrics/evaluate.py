"""Evaluation protocol: FID against the held-out eval split (also vs the train split; KID with Inception),
the real-vs-real floor, class accuracy, NFE, p50 latency and throughput, the teacher's FID at
several NFE, and student-teacher agreement on the same noise - each FID with its feature net,
reference set and sample counts."""
from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch

from components.config import EvalConfig, ExtractorConfig
from components.data import ImageDataset
from components.diffusion.generate import Generated, balanced_labels, generate, sample_batch
from components.diffusion.noise_schedule import karras_sigmas
from components.metrics.extractors import build_extractor, extract
from components.metrics.features import FeatureNet, class_accuracy
from components.metrics.fid import FeatureSet, ReferenceFeatures, fid, kid

References = ReferenceFeatures


def extractor_for(cfg: ExtractorConfig | EvalConfig, feature_net: FeatureNet):
    return build_extractor(cfg.feature_net, feature_net, cfg.inception_dir, cfg.inception_download)


def reference_features(extractor, data: ImageDataset) -> References:
    """Features of the real eval and train splits (computed once per dataset version + extractor)."""
    sets = {}
    for split in ("eval", "train"):
        x, _ = data.split(split)
        sets[split] = FeatureSet(extract(extractor, x), f"real-{split}", extractor.name)
    return ReferenceFeatures(**sets)


def real_floor(refs: References, num_samples: int, seed: int = 0) -> dict:
    """FID(real train images, eval split) with `num_samples` train images, the count every generated
    set of the run has (FID's bias depends on it): the best a generator of this data could score.
    When the train split is smaller (the 1,347 training digits), the images are drawn with replacement:
    the name says so."""
    train = refs["train"].features
    replace = num_samples > len(train)
    rows = np.random.default_rng(seed).choice(len(train), num_samples, replace=replace)
    how = f"{num_samples} of {len(train)}, drawn with replacement" if replace else f"{num_samples} of {len(train)}"
    sample = FeatureSet(train[np.sort(rows)], f"real-train ({how})", refs["train"].feature_net)
    return fid(sample.stats(), refs["eval"].stats(), refs["eval"].feature_net).as_dict()


def score_samples(gen: Generated, name: str, extractor, classifier: FeatureNet, refs: References,
                  kid_subsets: int = 100) -> tuple[dict, FeatureSet | None]:
    """FID vs eval and train splits, KID vs eval, class accuracy, NFE, throughput.
    Samples with NaN/inf cannot be scored: FID/KID are NaN and `nonfinite_samples` counts them."""
    n = len(gen.images)
    base = {"nfe": gen.nfe, "sampling_seconds": gen.seconds, "num_samples": n,
            "throughput": n / gen.seconds if gen.seconds > 0 else float("inf")}
    bad = int((~torch.isfinite(gen.images.flatten(1))).any(dim=1).sum())
    if bad:
        nan = float("nan")
        return {**base, "fid": nan, "fid_train": nan, "kid": nan if extractor.kid else None, "class_acc": nan,
                "nonfinite_samples": bad,
                "fid_detail": {"feature_net": extractor.name, "reference": refs["eval"].name,
                               "num_reference": len(refs["eval"].features), "samples": f"{name}-samples",
                               "num_samples": n, "fid": nan}}, None
    feats = FeatureSet(extract(extractor, gen.images), f"{name}-samples", extractor.name)
    stats = feats.stats()
    r_eval, r_train = fid(stats, refs["eval"].stats(), extractor.name), fid(stats, refs["train"].stats(),
                                                                           extractor.name)
    _, pred = classifier.embed(gen.images)
    return {**base, "fid": r_eval.fid, "fid_train": r_train.fid, "fid_detail": r_eval.as_dict(),
            "kid": kid(feats.features, refs["eval"].features, kid_subsets) if extractor.kid else None,
            "class_acc": float((pred == gen.labels).float().mean()), "nonfinite_samples": 0}, feats


def latency_p50(denoiser, num_classes: int, repeats: int, seed: int = 0, guidance_scale: float = 1.0) -> float:
    """Median seconds to generate ONE image (batch 1, after one warm-up), sampler included (CFG at
    `guidance_scale`)."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        generate(denoiser, torch.tensor([i % num_classes]), seed + i, batch_size=1, guidance_scale=guidance_scale)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def evaluate_generator(denoiser, name: str, extractor, classifier: FeatureNet, data: ImageDataset,
                       refs: References, cfg: EvalConfig, progress: bool = False, guidance_scale: float = 1.0
                       ) -> tuple[dict, FeatureSet | None, Generated]:
    """Sample cfg.num_samples class-balanced images with the denoiser's own recipe (classifier-free
    guidance at `guidance_scale`) and score them."""
    labels = balanced_labels(cfg.num_samples, data.num_classes)
    gen = generate(denoiser, labels, cfg.seed, cfg.batch_size, guidance_scale=guidance_scale, progress=progress,
                   desc=f"sampling {name}")
    metrics, feats = score_samples(gen, name, extractor, classifier, refs, cfg.kid_subsets)
    return metrics, feats, gen


def with_heun_steps(teacher, steps: int):
    """The teacher with its Heun sampler on `steps` Karras sigmas (2*steps-1 NFE)."""
    t = copy.copy(teacher)        # shares the weights; only the recipe differs
    sigmas = karras_sigmas(steps, teacher.sigma_min, teacher.sigma_max)
    t.sampling = {"sampler": "heun", "sigmas": [round(float(s), 6) for s in sigmas]}
    return t


def evaluate_teacher_model(teacher, data: ImageDataset, feature_net: FeatureNet, refs: References,
                           cfg: EvalConfig, progress: bool = True) -> tuple[dict, FeatureSet, Generated]:
    """The teacher's figures at its own multi-step sampler (plus FID at cfg.teacher_nfe_steps),
    with the real-vs-real floor and the real eval images' class accuracy. Non-finite teacher samples are an error."""
    from components.diffusion import state_hash

    extractor = extractor_for(cfg, feature_net)
    metrics, feats, gen = evaluate_generator(teacher, "teacher", extractor, feature_net, data, refs, cfg, progress)
    if feats is None:
        raise ValueError(f"teacher: {metrics['nonfinite_samples']} of {len(gen.images)} samples contain NaN/inf")
    curve = [{"model": "teacher", "nfe": metrics["nfe"], "fid": metrics["fid"]}]
    for steps in cfg.teacher_nfe_steps:
        m, _, _ = evaluate_generator(with_heun_steps(teacher, steps), f"teacher-{steps}", extractor, feature_net,
                                     data, refs, cfg, progress)
        curve.append({"model": "teacher", "nfe": m["nfe"], "fid": m["fid"]})
    metrics.update(teacher_sha256=state_hash(teacher), real_floor=real_floor(refs, cfg.num_samples, cfg.seed),
                   real_class_acc=class_accuracy(feature_net, data),   # the gate's scale
                   latency_p50=latency_p50(teacher, data.num_classes, cfg.latency_repeats),
                   fid_vs_nfe=sorted(curve, key=lambda p: p["nfe"]))
    return metrics, feats, gen


@torch.no_grad()
def agreement(teacher, student, classifier: FeatureNet, num_classes: int, n: int, seed: int,
              batch_size: int = 500) -> dict:
    """Teacher and student from the SAME initial noise and labels: pixel RMSE (images in [-1, 1])
    and how often the classifier gives both images the same class."""
    g = torch.Generator().manual_seed(seed)
    labels = balanced_labels(n, num_classes)
    cfg = teacher.unet.config
    sq, same = 0.0, 0
    for i in range(0, n, batch_size):
        y = labels[i:i + batch_size]
        z = torch.randn((len(y), cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=g)
        x_t = sample_batch(teacher, z, y, torch.Generator().manual_seed(seed + i))
        x_s = sample_batch(student, z, y, torch.Generator().manual_seed(seed + i))
        sq += float(((x_t - x_s) ** 2).flatten(1).mean(1).sum())
        same += int((classifier.embed(x_t)[1] == classifier.embed(x_s)[1]).sum())
    return {"agreement_rmse": (sq / n) ** 0.5, "agreement_class": same / n, "agreement_samples": n}


def evaluate_student_model(student, teacher, data: ImageDataset, feature_net: FeatureNet, refs: References,
                           teacher_metrics: dict, teacher_features: FeatureSet, cfg: EvalConfig,
                           progress: bool = True) -> tuple[dict, Generated]:
    """The student's figures beside the teacher's -> (summary of the run, the student's samples)."""
    from components.metrics.summary import summary

    extractor = extractor_for(cfg, feature_net)
    student_m, feats, gen = evaluate_generator(student, "student", extractor, feature_net, data, refs, cfg, progress)
    gap = fid(feats.stats(), teacher_features.stats(), extractor.name).as_dict() if feats is not None \
        else {"fid": float("nan")}
    student_m["latency_p50"] = latency_p50(student, data.num_classes, cfg.latency_repeats)
    extra = agreement(teacher, student, feature_net, data.num_classes, cfg.agreement_samples, cfg.seed,
                      cfg.batch_size) if feats is not None else {}
    if getattr(student, "sampling_sweep", None) and feats is not None:   # e.g. CTM: its step x gamma grid
        extra["student_fid_vs_nfe"] = sampling_sweep(student, extractor, feature_net, data, refs, cfg, progress)
    return {**summary(teacher_metrics, student_m, gap), **extra}, gen


def sampling_sweep(student, extractor, feature_net: FeatureNet, data: ImageDataset, refs: References,
                   cfg: EvalConfig, progress: bool = True) -> list[dict]:
    """FID of one student at each point of the grid its class declares (`sampling_sweep`, e.g.
    CTMDenoiser's steps x gamma), each sampled with `student.with_sampling(steps, gamma)` and the same sample
    count, seed and reference as every FID of the run:
    [{'model': 'student gamma=g', 'nfe', 'fid', 'class_acc', 'steps', 'gamma'}]. One step is the same for
    every gamma (a jump to 0): scored once, drawn on each gamma's curve."""
    grid = student.sampling_sweep
    points, one = [], None
    for gamma in grid["gamma"]:
        for n in grid["steps"]:
            if n == 1 and one is not None:
                m = one
            else:
                m, _, _ = evaluate_generator(student.with_sampling(n, gamma), f"student-{n}-{gamma}", extractor,
                                             feature_net, data, refs, cfg, progress)
                one = m if n == 1 else one
            points.append({"model": f"student gamma={gamma:g}", "nfe": m["nfe"], "fid": m["fid"],
                           "class_acc": m["class_acc"], "steps": n, "gamma": gamma})
    return points


def guidance_sweep(model, name: str, ws, extractor, feature_net: FeatureNet, data: ImageDataset, refs: References,
                   cfg: EvalConfig, progress: bool = True) -> list[dict]:
    """FID and class accuracy of one model at each guidance strength w (CFG scale 1 + w: two network
    evaluations per step for a teacher, one for a guided student), each with the run's sample count, seed
    and reference: [{'model': name, 'w', 'nfe', 'fid', 'class_acc'}]."""
    points = []
    for w in ws:
        m, _, _ = evaluate_generator(model, f"{name}-w{w:g}", extractor, feature_net, data, refs, cfg, progress,
                                     guidance_scale=1.0 + float(w))
        points.append({"model": name, "w": float(w), "nfe": m["nfe"], "fid": m["fid"], "class_acc": m["class_acc"]})
    return points


def checkpoint_fid(method, feature_net: FeatureNet, refs: References, extractor_cfg: ExtractorConfig,
                   num_samples: int, seed: int = 0, batch_size: int = 500):
    """distill() callback: every method.cfg.fid_every iterations (and at the end) add the current
    student's FID on `num_samples` samples (evaluation.num_samples, as every FID of the run) to the
    history row as 'fid'."""
    extractor = extractor_for(extractor_cfg, feature_net)
    every, n = method.cfg.fid_every, num_samples
    num_classes = method.data.num_classes

    def callback(iteration: int, row: dict) -> None:
        if every and (iteration % every == 0 or iteration == method.cfg.iterations):
            gen = generate(method.student(), balanced_labels(n, num_classes), seed, batch_size)
            row["fid"] = score_samples(gen, "checkpoint", extractor, feature_net, refs, kid_subsets=1)[0]["fid"]

    return callback


def fid_on_this_run(generator, data: ImageDataset, feature_net: FeatureNet, refs: References,
                    cfg: EvalConfig) -> float:
    """FID of any generator (e.g. the production student) on this run's reference features."""
    metrics, _, _ = evaluate_generator(generator, "production", extractor_for(cfg, feature_net), feature_net,
                                       data, refs, cfg)
    return float(metrics["fid"])


def fid_between_folders(folder_1: str, folder_2: str, extractor) -> float:
    """FID of two image folders (PNG/JPEG) - the same numbers clean-fid's compute_fid gives."""
    from pathlib import Path

    from PIL import Image

    def load(folder: str) -> torch.Tensor:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        if not files:
            raise ValueError(f"'{folder}': no PNG/JPEG images")
        x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1

    sets = [FeatureSet(extract(extractor, load(f)), str(f), extractor.name) for f in (folder_1, folder_2)]
    return fid(sets[0].stats(), sets[1].stats(), extractor.name).fid
