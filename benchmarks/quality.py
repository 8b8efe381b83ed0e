"""Quality benchmark of the embedded default: runs dmd2_pipeline (reusing cached teacher,
feature net and data when the store has them), then evaluates teacher and student in THIS
process over several sampling seeds. Prints a table, and one JSON object as the last line.

    python benchmarks/quality.py                 # reuse .benchmarks/zenml (teacher cached after 1st run)
    python benchmarks/quality.py --fresh         # empty ZenML store: teacher training included
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "dmd2_local.yaml"), help="pipeline YAML")
    p.add_argument("--store", default=str(ROOT / ".benchmarks" / "zenml"), help="ZENML_CONFIG_PATH to use")
    p.add_argument("--fresh", action="store_true", help="start from an empty ZenML store")
    p.add_argument("--seeds", type=int, default=3, help="sampling seeds (mean and std over them)")
    p.add_argument("--num-samples", type=int, default=None, help="override evaluation.num_samples")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def _env(store: str) -> None:
    os.environ.update(ZENML_CONFIG_PATH=store, ZENML_ANALYTICS_OPT_IN="false", DVC_NO_ANALYTICS="1",
                      WANDB_MODE="offline", GX_ANALYTICS_ENABLED="false", AUTO_OPEN_DASHBOARD="false")
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")


def run_pipeline(config: str) -> tuple[object, float]:
    """Run dmd2_pipeline with the given config; distill + student evaluation are never cached."""
    import yaml

    from pipelines import dmd2_pipeline

    cfg = yaml.safe_load(Path(config).read_text())
    cfg.setdefault("steps", {})
    for name in ("distill_step", "evaluate_student"):
        cfg["steps"].setdefault(name, {})["enable_cache"] = False
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    t0 = time.perf_counter()
    try:
        run = dmd2_pipeline.with_options(config_path=f.name)()
    finally:
        os.unlink(f.name)
    return run, time.perf_counter() - t0


def evaluate(run, num_samples: int | None, seeds: int, batch_size: int) -> dict:
    """Teacher and student over `seeds` sampling seeds, in one process (so wall-clocks compare)."""
    import numpy as np

    from components.diffusion.generate import balanced_labels, generate
    from components.metrics import fid
    from components.metrics.evaluate import latency_p50, real_floor, score_samples
    from components.metrics.extractors import DatasetFeatures
    from steps import names

    steps = run.steps
    load = lambda step, out: steps[step].outputs[out][0].load()  # noqa: E731
    data, fnet = load("build_dataset", names.DATASET), load("feature_net_step", names.FEATURE_NET)
    teacher, student = load("teacher_step", names.TEACHER), load("distill_step", names.STUDENT)
    n = num_samples or steps["evaluate_teacher"].config.parameters["evaluation"]["num_samples"]
    refs, extractor = load("reference_statistics", names.REFERENCE_FEATURES), DatasetFeatures(fnet)
    labels = balanced_labels(n, data.num_classes)
    per_seed = {k: [] for k in ("teacher_fid", "student_fid", "teacher_fid_train", "student_fid_train",
                                "teacher_class_acc", "student_class_acc", "distill_gap_fid", "teacher_kid", "student_kid")}
    t_sec = s_sec = 0.0
    for seed in range(seeds):
        t_gen = generate(teacher, labels, seed, batch_size, progress=True, desc=f"teacher seed {seed}")
        s_gen = generate(student, labels, seed, batch_size)
        t_m, t_feats = score_samples(t_gen, "teacher", extractor, fnet, refs)
        s_m, s_feats = score_samples(s_gen, "student", extractor, fnet, refs)
        t_sec, s_sec = t_sec + t_gen.seconds, s_sec + s_gen.seconds
        for who, m in (("teacher", t_m), ("student", s_m)):
            per_seed[f"{who}_fid"].append(m["fid"])
            per_seed[f"{who}_fid_train"].append(m["fid_train"])
            per_seed[f"{who}_class_acc"].append(m["class_acc"])
            per_seed[f"{who}_kid"].append(m["kid"])
        per_seed["distill_gap_fid"].append(fid(s_feats.stats(), t_feats.stats(), fnet.name).fid)
    out = {}
    for k, v in per_seed.items():
        out[k] = float(np.mean(v))
        if k in ("teacher_fid", "student_fid", "distill_gap_fid"):
            out[f"{k}_std"] = float(np.std(v))
    floor = real_floor(refs)
    out.update(
        teacher_nfe=t_gen.nfe, student_nfe=s_gen.nfe, real_floor_fid=floor["fid"],
        fid_ratio=out["student_fid"] / out["teacher_fid"],
        sampling_speedup=t_sec / s_sec, teacher_sampling_seconds=t_sec, student_sampling_seconds=s_sec,
        teacher_throughput=seeds * n / t_sec, student_throughput=seeds * n / s_sec,
        teacher_latency_p50_ms=1000 * latency_p50(teacher, data.num_classes, 20),
        student_latency_p50_ms=1000 * latency_p50(student, data.num_classes, 20),
        feature_net=fnet.name, num_samples=n, seeds=seeds,
        reference=f"real eval split (n={len(refs.eval.features)}; train split n={len(refs.train.features)} "
                  "also reported)",
    )
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.fresh and Path(args.store).exists():
        shutil.rmtree(args.store)
    _env(args.store)
    sys.path.insert(0, str(ROOT))
    run, pipeline_seconds = run_pipeline(args.config)
    if run is None or str(run.status) not in ("completed", "ExecutionStatus.COMPLETED"):
        raise SystemExit(f"pipeline run did not complete: {getattr(run, 'status', None)}")
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    steps = run.steps
    teacher_cached = str(steps["teacher_step"].status) in ("cached", "ExecutionStatus.CACHED")
    result = evaluate(run, args.num_samples, args.seeds, 500)
    result.update(
        distill_seconds=float(steps["distill_step"].run_metadata.get("distill_seconds", float("nan"))),
        pipeline_seconds=pipeline_seconds, teacher_cached=teacher_cached,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        run_id=str(run.id), config=os.path.relpath(args.config, ROOT),
    )
    rows = [("teacher", result["teacher_fid"], result["teacher_fid_std"], result["teacher_class_acc"],
             result["teacher_nfe"]),
            ("student", result["student_fid"], result["student_fid_std"], result["student_class_acc"],
             result["student_nfe"])]
    print(f"\n| model | FID (eval split) | std over {args.seeds} seeds | KID | class acc | NFE | p50 ms/image | "
          "images/s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        who = r[0]
        print(f"| {who} | {r[1]:.3f} | {r[2]:.3f} | {result[who + '_kid']:.4f} | {r[3]:.3f} | {r[4]} | "
              f"{result[who + '_latency_p50_ms']:.1f} | {result[who + '_throughput']:.0f} |")
    print(f"\nfeature net {result['feature_net']}, {result['num_samples']} samples/seed, "
          f"reference {result['reference']}, real floor {result['real_floor_fid']:.3f}\n")
    line = json.dumps(result)
    if args.out:                                   # write-then-rename: never a half-written file
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(line + "\n")
        os.replace(tmp, args.out)
    print(line)
    return result


if __name__ == "__main__":
    main()
