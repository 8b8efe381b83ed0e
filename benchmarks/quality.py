"""One pipeline run, scored over sampling seeds (the leaderboard, benchmarks/leaderboard.py, is the
benchmark of record and writes docs/results.md): runs dmd2_pipeline (reusing cached teacher,
feature net, pairs and data when the store has them), then evaluates teacher and student in THIS
process over several sampling seeds. Prints a markdown table, and one JSON object as the last line.

    python benchmarks/quality.py                       # 1-step DMD2 (configs/dmd2_local.yaml), teacher cached
    python benchmarks/quality.py --steps 4             # 4-step student (configs/dmd2_4step_local.yaml)
    python benchmarks/quality.py --ablation            # + no GAN, no TTUR, without the regression loss, 4-step
                                                       #   with and without backward simulation, and with the
                                                       #   online G rolling out (same artifacts)
    python benchmarks/quality.py --fresh               # empty ZenML store: teacher training included
    python benchmarks/quality.py --throughput          # distillation images/s + peak memory (GPU: bf16)
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
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance, utc_now  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="dmd2", help="distill.method (components.methods.METHODS)")
    p.add_argument("--steps", type=int, default=1, help="student steps: 1 -> configs/dmd2_local.yaml, 4 -> "
                   "configs/dmd2_4step_local.yaml, other counts: evenly spaced timesteps")
    p.add_argument("--ablation", action="store_true", help="also run the ablation variants (1-step and 4-step)")
    p.add_argument("--variants", default=None, help="comma-separated subset of the ablation variants (with "
                   "--ablation); default: all of " + ", ".join(repr(k) for k in VARIANTS if k != "full"))
    p.add_argument("--run-id", default=None, help="evaluate this completed dmd2_pipeline run's artifacts instead of "
                   "running the pipeline (e.g. a second process sharing an ablation)")
    p.add_argument("--teacher-from", default=None, help="with --run-id: take the teacher's figures from this "
                   "benchmark JSON of the same run instead of sampling the teacher again (no distill gap then)")
    p.add_argument("--throughput", action="store_true", help="only measure distillation throughput and memory")
    p.add_argument("--config", default=None, help="pipeline YAML (default: from --steps)")
    p.add_argument("--store", default=str(ROOT / ".benchmarks" / "zenml"), help="ZENML_CONFIG_PATH to use")
    p.add_argument("--fresh", action="store_true", help="start from an empty ZenML store")
    p.add_argument("--seeds", type=int, default=3, help="sampling seeds (mean and std over them)")
    p.add_argument("--num-samples", type=int, default=None, help="override evaluation.num_samples")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    return args


def _env(store: str) -> None:
    os.environ.update(ZENML_CONFIG_PATH=store, ZENML_ANALYTICS_OPT_IN="false", DVC_NO_ANALYTICS="1",
                      WANDB_MODE="offline", GX_ANALYTICS_ENABLED="false", AUTO_OPEN_DASHBOARD="false")
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")


def timesteps(steps: int, T: int = 1000) -> list[int]:
    """Evenly spaced student timesteps on the T-grid: 1 -> [999], 4 -> [999, 749, 499, 249]."""
    return [T - 1 - i * (T // steps) for i in range(steps)]


# name -> (student steps, distill overrides). "full" is the pipeline's own student.
VARIANTS = {
    "full": (1, {}),
    "no GAN": (1, {"w_gen": 0.0, "w_D": 0.0}),
    "no TTUR (ratio 1)": (1, {"dfake_gen_update_ratio": 1}),
    "no regression (DMD2 as published)": (1, {"regression_weight": 0.0}),
    "4-step full": (4, {}),
    "4-step w/o backward sim": (4, {"backward_simulation": False}),
    "4-step rollouts by online G": (4, {"rollout_model": "online"}),
}


def run_pipeline(config: str, method: str, steps: int) -> tuple[object, float]:
    """Run dmd2_pipeline with the given config; distill + student evaluation are never cached."""
    import yaml

    from pipelines import dmd2_pipeline

    cfg = yaml.safe_load(Path(config).read_text())
    params = cfg.setdefault("parameters", {})
    distill = params.setdefault("distill", {})
    distill.update(method=method, resume="never")               # a benchmark always trains
    if distill.get("denoising_timesteps") is None or len(distill["denoising_timesteps"]) != steps:
        distill["denoising_timesteps"] = timesteps(steps)
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


class Context:
    """The run's artifacts and the sampling protocol: n balanced labels, seeds 0..k-1, eval split."""

    def __init__(self, run, num_samples: int | None, seeds: int):
        from components.diffusion.generate import balanced_labels
        from components.metrics.extractors import DatasetFeatures
        from steps import names

        steps = run.steps
        load = lambda step, out: steps[step].outputs[out][0].load()  # noqa: E731
        self.data, self.fnet = load("build_dataset", names.DATASET), load("feature_net_step", names.FEATURE_NET)
        self.teacher, self.student = load("teacher_step", names.TEACHER), load("distill_step", names.STUDENT)
        self.pairs = load("teacher_pairs", names.TEACHER_PAIRS)
        self.refs, self.extractor = load("reference_statistics", names.REFERENCE_FEATURES), DatasetFeatures(self.fnet)
        self.distill_cfg = steps["distill_step"].config.parameters["distill_config"]
        self.n = num_samples or steps["evaluate_teacher"].config.parameters["evaluation"]["num_samples"]
        self.seeds, self.labels = seeds, balanced_labels(self.n, self.data.num_classes)

    def evaluate(self, model, who: str, progress: bool = False) -> tuple[dict, list]:
        """Mean (and std) over the seeds of FID, class accuracy; NFE, throughput, p50 latency."""
        import numpy as np

        from components.diffusion.generate import generate
        from components.metrics.evaluate import latency_p50, score_samples

        per, feats, sec = {"fid": [], "fid_train": [], "class_acc": []}, [], 0.0
        for seed in range(self.seeds):
            gen = generate(model, self.labels, seed, 500, progress=progress, desc=f"{who} seed {seed}")
            m, f = score_samples(gen, who, self.extractor, self.fnet, self.refs)
            feats.append(f)
            sec += gen.seconds
            for k in per:
                per[k].append(m[k])
        out = {k: float(np.mean(v)) for k, v in per.items()}
        out.update(fid_std=float(np.std(per["fid"])), nfe=gen.nfe, sampling_seconds=sec,
                   throughput=self.seeds * self.n / sec,
                   latency_p50_ms=1000 * latency_p50(model, self.data.num_classes, 20))
        return out, feats


def distill_variant(ctx: Context, steps: int, overrides: dict):
    """The same distillation as the pipeline's, in this process, with `overrides`; -> (student, seconds)."""
    from components.methods import build_method, distill

    cfg = {**ctx.distill_cfg, **overrides, "denoising_timesteps": timesteps(steps), "fid_every": 0,
           "checkpoint_every": 0, "resume": "never"}
    method = build_method(ctx.teacher, cfg, ctx.data, ctx.pairs)
    t0 = time.perf_counter()
    distill(method, progress=True)
    return method.student(), time.perf_counter() - t0


def throughput(iterations: int = 20) -> dict:
    """Distillation images/s and peak memory on this machine's device (bf16 autocast on CUDA): the
    embedded default's UNet (8x8x1) and a 64x64 RGB UNet of ImageNet-64 size (random init)."""
    import torch

    from components.config import TeacherConfig
    from components.data import ImageDataset
    from components.methods import build_method, distill
    from components.teacher import build_teacher

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    out = {"device": device, "precision": "bf16" if cuda else "fp32"}
    shapes = {"embedded default 8x8x1": (1, 8, (32, 64), 64),
              "ImageNet-64 size 64x64x3": (3, 64, (128, 256, 256, 256), 64 if cuda else 4)}
    for name, (C, H, channels, batch) in shapes.items():
        n = 4 * batch
        data = ImageDataset(torch.rand(n, C, H, H) * 2 - 1, torch.arange(n) % 10, torch.zeros(n, dtype=torch.bool),
                            [str(i) for i in range(10)])
        teacher = build_teacher(TeacherConfig(block_out_channels=channels, norm_num_groups=32 if C == 3 else 8),
                                10, C, H)
        cfg = {"method": "dmd2", "iterations": iterations, "batch_size": batch, "log_every": iterations,
               "device": "auto", "precision": "auto", "fid_every": 0, "checkpoint_every": 0}
        method = build_method(teacher, {**cfg, "iterations": 2}, data)
        distill(method, progress=False)                               # warm-up (kernels, allocator)
        method = build_method(teacher, cfg, data)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        distill(method, progress=False)
        if cuda:
            torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        out[name] = {"images_per_s": iterations * batch / sec, "batch_size": batch,
                     "parameters": sum(p.numel() for p in teacher.parameters()),
                     "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if cuda else
                                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)}
    return out


def query(args) -> tuple[object, Context, float, str]:
    """Find (--run-id) or run the pipeline, check it completed, load its artifacts.
    -> (run, its Context, pipeline seconds (nan with --run-id), config path)."""
    if args.fresh and Path(args.store).exists():
        shutil.rmtree(args.store)
    _env(args.store)
    config = args.config or str(ROOT / "configs" / ("dmd2_4step_local.yaml" if args.steps == 4 else "dmd2_local.yaml"))
    if args.run_id:
        from zenml.client import Client

        run, pipeline_seconds = Client().get_pipeline_run(args.run_id), float("nan")
    else:
        run, pipeline_seconds = run_pipeline(config, args.method, args.steps)
    if run is None or str(run.status) not in ("completed", "ExecutionStatus.COMPLETED"):
        raise SystemExit(f"pipeline run did not complete: {getattr(run, 'status', None)}")
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    return run, Context(run, args.num_samples, args.seeds), pipeline_seconds, config


def evaluate(args, run, ctx: Context, pipeline_seconds: float, config: str) -> dict:
    """Teacher (or its figures from --teacher-from) and each student variant over the seeds -> the result dict."""
    from components.metrics import fid
    from components.metrics.evaluate import real_floor

    steps = run.steps
    if args.teacher_from:
        prior = json.loads(Path(args.teacher_from).read_text().strip().splitlines()[-1])
        if prior.get("run_id") != str(run.id):
            raise SystemExit(f"--teacher-from {args.teacher_from}: its run_id {prior.get('run_id')} is not the "
                             f"evaluated run {run.id}")
        teacher, t_feats = prior["teacher"], None
    else:
        teacher, t_feats = ctx.evaluate(ctx.teacher, "teacher", progress=True)
    distill_seconds = float(steps["distill_step"].run_metadata.get("distill_seconds", float("nan")))
    variants = {"full": (args.steps, None)}
    if args.ablation:
        wanted = ([v.strip() for v in args.variants.split(",")] if args.variants
                  else [k for k in VARIANTS if k != "full"])
        unknown = [w for w in wanted if w not in VARIANTS]
        if unknown:
            raise SystemExit(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
        variants.update({k: VARIANTS[k] for k in wanted if k != "full"})
    rows = []
    for name, (n_steps, overrides) in variants.items():
        if overrides is None:                                          # the pipeline's own student
            student, seconds = ctx.student, distill_seconds
        else:
            print(f"\nablation: {name}", file=sys.stderr)
            student, seconds = distill_variant(ctx, n_steps, overrides)
        m, s_feats = ctx.evaluate(student, name)
        gap = [fid(s.stats(), t.stats(), ctx.fnet.name).fid for s, t in zip(s_feats, t_feats or [])] or [float("nan")]
        rows.append({"variant": name if name != "full" else f"full ({args.steps}-step)", "steps": n_steps, **m,
                     "distill_seconds": seconds, "fid_ratio": m["fid"] / teacher["fid"],
                     "distill_gap_fid": sum(gap) / len(gap)})
    main_row = rows[0]
    return {
        "method": args.method, "steps": args.steps, "teacher": teacher, "rows": rows,
        # the headline figures of the main (pipeline) student, flat for dashboards
        "teacher_fid": teacher["fid"], "teacher_fid_std": teacher["fid_std"], "student_fid": main_row["fid"],
        "student_fid_std": main_row["fid_std"], "fid_ratio": main_row["fid_ratio"],
        "teacher_nfe": teacher["nfe"], "student_nfe": main_row["nfe"], "distill_seconds": distill_seconds,
        "sampling_speedup": teacher["sampling_seconds"] / main_row["sampling_seconds"],
        "real_floor_fid": real_floor(ctx.refs, ctx.n)["fid"], "feature_net": ctx.fnet.name, "num_samples": ctx.n,
        "seeds": args.seeds, "pipeline_seconds": pipeline_seconds,
        "teacher_cached": str(steps["teacher_step"].status) in ("cached", "ExecutionStatus.CACHED"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "reference": f"real eval split (n={len(ctx.refs.eval.features)})", "run_id": str(run.id),
        "config": os.path.relpath(config, ROOT),
    }


def report_table(result: dict) -> str:
    """The markdown table of a result: header, the teacher's row, one row per variant (no trailing newline)."""
    teacher, rows = result["teacher"], result["rows"]
    header = (f"| model | steps (NFE) | FID (eval split), mean of {result['seeds']} seeds | std | FID / teacher "
              "| class acc | distill s | p50 ms/image | images/s |")
    teacher_row = (f"| teacher (Heun) | {teacher['nfe']} | {teacher['fid']:.3f} | {teacher['fid_std']:.3f} | 1.000 | "
                   f"{teacher['class_acc']:.3f} | - | {teacher['latency_p50_ms']:.1f} | "
                   f"{teacher['throughput']:.0f} |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|", teacher_row]
    for r in rows:
        lines.append(f"| {result['method']} {r['variant']} | {r['nfe']} | {r['fid']:.3f} | {r['fid_std']:.3f} | "
                     f"{r['fid_ratio']:.3f} | {r['class_acc']:.3f} | {r['distill_seconds']:.0f} | "
                     f"{r['latency_p50_ms']:.1f} | {r['throughput']:.0f} |")
    return "\n".join(lines)


def report_footer(result: dict) -> str:
    """The line under the table: feature net, samples per seed, reference set, real-vs-real floor."""
    return (f"feature net {result['feature_net']}, {result['num_samples']} samples/seed, reference "
            f"{result['reference']}, real floor {result['real_floor_fid']:.3f}")


def print_report(result: dict, out: str | None = None) -> None:
    """The markdown table, then the JSON line (last line of stdout); also written atomically to `out`."""
    from components.atomic import write_text

    print("\n" + report_table(result))
    print(f"\n{report_footer(result)}\n")
    line = json.dumps(result)
    if out:
        write_text(out, line + "\n")
    print(line)


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.throughput:
        result = throughput()
        print(json.dumps(result))
        return result
    prov = provenance(sys.argv[1:] if argv is None else argv)
    run, ctx, pipeline_seconds, config = query(args)
    result = evaluate(args, run, ctx, pipeline_seconds, config)
    result["provenance"] = {**prov, "finished_utc": utc_now()}
    print_report(result, args.out)
    return result


if __name__ == "__main__":
    main()
