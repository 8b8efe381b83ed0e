"""The DVC stages of dvc.yaml: the same components and the same params.yaml as dmd2_pipeline.

    python -m components.stages data      --params params.yaml --out artifacts/dataset
    python -m components.stages features  --params params.yaml --dataset artifacts/dataset --out artifacts/feature_net
    python -m components.stages teacher   --params params.yaml --dataset artifacts/dataset --out artifacts/teacher
    python -m components.stages pairs     --params params.yaml --teacher artifacts/teacher --out artifacts/pairs
    python -m components.stages distill   --params params.yaml --dataset ... --teacher ... --features ...
                                          --pairs artifacts/pairs --checkpoints artifacts/checkpoints
                                          --out artifacts/student --plots plots/distill_losses.csv
    python -m components.stages evaluate  --params params.yaml --dataset ... --features ... --teacher ... --student ...
                                          --metrics metrics.json --out artifacts/eval --plots plots/fid_vs_nfe.csv
    python -m components.stages export    --params params.yaml --dataset ... --student ... --metrics metrics.json
                                          --eval artifacts/eval --out models/dmd2_student --report artifacts/report/run_report.html

Each stage writes into a temp folder beside its output and renames it when done, so a failed or
killed stage leaves nothing half-written. Two stages resume instead: `pairs` keeps its finished
shards, `distill` its checkpoints (both are DVC outs with persist: true). Bad input exits 1 with one line naming the file/field.

`distill` also runs data-parallel, unchanged, under a launcher (components/distributed.py):
    torchrun --nproc_per_node 2 -m components.stages distill ...     (or accelerate launch, a PyTorchJob)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from components.config import (ConfigError, DataConfig, EvalConfig, FeatureNetConfig, GateConfig, TeacherConfig,
                               load_params)


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces `out`, on failure it is removed."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def write_json(path: str | os.PathLike, obj: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "iteration", k))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def stage_data(cfg: dict, out: str) -> None:
    """Scan -> validate (Great Expectations) -> dataset; the manifest and the report go beside it."""
    from components.data import build_manifest, load_images, save_manifest, validate
    from components.data.validation import DataValidationError

    data_cfg = DataConfig(**cfg["data"])
    manifest = build_manifest(data_cfg)
    report = validate(data_cfg, manifest)
    if not report.success:
        raise DataValidationError(report.error_message(data_cfg.path))
    dataset = load_images(data_cfg, manifest)
    with atomic_dir(out) as tmp:
        dataset.save(tmp)
        save_manifest(manifest, tmp / "manifest.csv")
        write_json(tmp / "validation.json", report.to_dict())
        (tmp / "validation.html").write_text(report.to_html())
    print(f"dataset: {len(manifest)} images, {int(dataset.is_eval.sum())} eval, shape {dataset.shape} -> {out}")


def stage_features(cfg: dict, dataset_dir: str, out: str) -> None:
    from components.data import ImageDataset
    from components.metrics import train_feature_net

    net, info = train_feature_net(FeatureNetConfig(**cfg["features"]), ImageDataset.load(dataset_dir))
    with atomic_dir(out) as tmp:
        net.save_pretrained(tmp)
    print(f"feature net {net.name}: {info} -> {out}")


def stage_teacher(cfg: dict, dataset_dir: str, out: str, plots: str) -> None:
    from components.data import ImageDataset
    from components.diffusion import save_denoiser
    from components.teacher import get_teacher
    from components.training import select_device
    from components.viz import windowed

    teacher, losses = get_teacher(TeacherConfig(**cfg["teacher"]), ImageDataset.load(dataset_dir),
                                  select_device("auto"))
    with atomic_dir(out) as tmp:
        save_denoiser(teacher, tmp)
    Path(plots).parent.mkdir(parents=True, exist_ok=True)
    write_csv(Path(plots), windowed(losses or []))


def stage_pairs(cfg: dict, teacher_dir: str, out: str) -> None:
    """Teacher pairs shard by shard straight into `out` (each shard atomic; finished ones kept)."""
    from components.config import PairsConfig
    from components.diffusion import load_denoiser
    from components.diffusion.pairs import generate_pairs
    from components.teacher import teacher_sampling
    from components.training import select_device

    teacher = load_denoiser(teacher_dir, what="teacher")
    teacher.sampling = teacher_sampling(TeacherConfig(**cfg["teacher"]), teacher)
    pairs = generate_pairs(teacher.to(select_device("auto")), PairsConfig(**cfg["pairs"]), out)
    print(f"teacher pairs: {len(pairs)} ({pairs.sampler['sampler']}, {len(pairs.sampler['sigmas']) - 1} steps) -> {out}")


def _references(cfg: dict, dataset, net):
    from components.metrics.evaluate import extractor_for, reference_features

    return reference_features(extractor_for(EvalConfig(**cfg["evaluation"]), net), dataset)


def stage_distill(cfg: dict, dataset_dir: str, teacher_dir: str, features_dir: str, pairs_dir: str,
                  checkpoints: str, out: str, plots: str) -> None:
    from components.data import ImageDataset
    from components.diffusion import load_denoiser, save_denoiser
    from components.methods import build_method, distill
    from components.metrics import FeatureNet
    from components.metrics.evaluate import checkpoint_fid

    from components.diffusion import state_hash
    from components.diffusion.pairs import load_pairs

    from components.distributed import init_from_env, shutdown

    world = init_from_env()          # under torchrun / accelerate launch / a PyTorchJob: data-parallel ranks
    try:
        dataset, net = ImageDataset.load(dataset_dir), FeatureNet.from_pretrained(features_dir)
        teacher = load_denoiser(teacher_dir, what="teacher")
        pairs = load_pairs(pairs_dir, state_hash(teacher), what=f"--pairs '{pairs_dir}'") if pairs_dir else None
        Path(checkpoints).mkdir(parents=True, exist_ok=True)      # a DVC out even with checkpoints off
        method = build_method(teacher, {**cfg["distill"], "checkpoint_dir": checkpoints}, dataset, pairs)
        callback = None
        if world.is_main:            # the student's FID at checkpoints: rank 0 only (the ranks hold the same G)
            callback = checkpoint_fid(method, net, _references(cfg, dataset, net), EvalConfig(**cfg["evaluation"]))
        t0 = time.perf_counter()
        history = distill(method, callback=callback)
        if world.is_main:
            print(f"distillation: {time.perf_counter() - t0:.0f} s on {world.size} process(es)")
            with atomic_dir(out) as tmp:
                save_denoiser(method.student(), tmp)
            Path(plots).parent.mkdir(parents=True, exist_ok=True)
            write_csv(Path(plots), history)
        world.barrier()
    finally:
        shutdown()


def stage_evaluate(cfg: dict, dataset_dir: str, features_dir: str, teacher_dir: str, student_dir: str,
                   metrics: str, out: str, plots: str) -> None:
    """metrics.json (the run's summary), the teacher's figures and FID-vs-NFE points, sample grids."""
    from components.data import ImageDataset
    from components.diffusion import load_denoiser
    from components.metrics import FeatureNet, FeatureSet
    from components.metrics.evaluate import evaluate_student_model, evaluate_teacher_model
    from components.metrics.report import summary_table
    from components.review import fid_points
    from components.viz import fid_vs_nfe, sample_grid

    ev = EvalConfig(**cfg["evaluation"])
    dataset, net = ImageDataset.load(dataset_dir), FeatureNet.from_pretrained(features_dir)
    teacher, student = load_denoiser(teacher_dir, what="teacher"), load_denoiser(student_dir, what="student")
    refs = _references(cfg, dataset, net)
    t_metrics, t_feats, t_gen = evaluate_teacher_model(teacher, dataset, net, refs, ev)
    t_metrics = json.loads(json.dumps(t_metrics))   # the same JSON round trip as between the pipeline's steps
    result, s_gen = evaluate_student_model(student, teacher, dataset, net, refs, t_metrics,
                                           FeatureSet(t_feats.features, t_feats.name, t_feats.feature_net), ev)
    points = fid_points(t_metrics["fid_vs_nfe"], result)
    with atomic_dir(out) as tmp:
        for name, gen in (("teacher", t_gen), ("student", s_gen)):
            sample_grid(gen.images.nan_to_num(0.0), gen.labels, dataset.num_classes,
                        ev.grid_per_class).save(tmp / f"{name}_samples.png")
        fid_vs_nfe(points).save(tmp / "fid_vs_nfe.png")
        write_json(tmp / "teacher_metrics.json", t_metrics)
    Path(plots).parent.mkdir(parents=True, exist_ok=True)
    write_csv(Path(plots), points)
    write_json(metrics, result)
    print(summary_table(result))


def stage_export(cfg: dict, dataset_dir: str, student_dir: str, metrics: str, eval_dir: str, out: str,
                 report: str) -> None:
    """The quality gate on metrics.json (no production model outside ZenML), then the stock-diffusers
    folder - or only REJECTED.md with the reasons - and the run report (HTML)."""
    from PIL import Image

    from components.data import ImageDataset
    from components.data.versioning import dvc_md5
    from components.diffusion import load_denoiser
    from components.export import export_student
    from components.gate import decide
    from components.review import run_report

    figures = json.loads(Path(metrics).read_text())
    decision = decide(GateConfig(**cfg["gate"]), figures)
    print(decision.summary())
    data_md5 = dvc_md5(cfg["data"]["path"])
    ev = Path(eval_dir)
    page = run_report(figures, {**decision.to_dict(), "model_version": ""}, Image.open(ev / "fid_vs_nfe.png"),
                      Image.open(ev / "teacher_samples.png"), Image.open(ev / "student_samples.png"),
                      {"data": f"{cfg['data']['path']} (DVC md5 {data_md5})", "engine": "dvc repro",
                       "teacher sha256": figures.get("teacher_sha256", "")})
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    tmp_report = Path(report).with_name(f".{Path(report).name}.tmp")
    tmp_report.write_text(page)
    os.replace(tmp_report, report)
    if not decision.passed:
        with atomic_dir(out) as tmp:
            (tmp / "REJECTED.md").write_text("Not exported: " + "; ".join(decision.reasons) + "\n")
        return
    card = {"method": cfg["distill"]["method"], "metrics": figures, "teacher_nfe": figures["teacher_nfe"],
            "class_names": ImageDataset.load(dataset_dir).class_names, "data_path": cfg["data"]["path"],
            "data_md5": data_md5, "config": cfg, "name": "fewstep DMD2 student"}
    export_student(load_denoiser(student_dir, what="student"), out, card, overwrite=True)   # DVC owns `out`
    print(f"exported to {out}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["data", "features", "teacher", "pairs", "distill", "evaluate", "export"])
    ap.add_argument("--params", default="params.yaml")
    for name in ("dataset", "features", "teacher", "pairs", "student", "metrics", "plots", "eval", "report"):
        ap.add_argument(f"--{name}")
    ap.add_argument("--checkpoints", default="artifacts/checkpoints")
    ap.add_argument("--out", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        cfg = load_params(a.params)
        if a.stage == "data":
            stage_data(cfg, a.out)
        elif a.stage == "features":
            stage_features(cfg, a.dataset, a.out)
        elif a.stage == "teacher":
            stage_teacher(cfg, a.dataset, a.out, a.plots)
        elif a.stage == "pairs":
            stage_pairs(cfg, a.teacher, a.out)
        elif a.stage == "distill":
            stage_distill(cfg, a.dataset, a.teacher, a.features, a.pairs, a.checkpoints, a.out, a.plots)
        elif a.stage == "evaluate":
            stage_evaluate(cfg, a.dataset, a.features, a.teacher, a.student, a.metrics, a.out, a.plots)
        else:
            stage_export(cfg, a.dataset, a.student, a.metrics, a.eval, a.out, a.report)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
