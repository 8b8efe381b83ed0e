"""Batch-1 latency of a routed MSD bundle against the single student, measured side by side.

Issue 18's latency target compares the p50 latency at batch 1 of K smaller one-step students (routed by class)
with the single DMD2 student's. On a shared 2-core machine the wall-clock of one model drifts by tens of percent
between runs minutes apart (the leaderboard's rows are measured at different times), so this script measures the
models interleaved: round after round, each model's p50 over `--repeats` one-image generations
(components.metrics.evaluate.latency_p50: sampler included, one warm-up), and reports each bundle's median over
the rounds of its p50 / the single student's p50 of the same round.

Latency does not depend on the weights: the models are freshly initialised networks of the architectures the
leaderboard trains (the single student: the dataset config's teacher UNet; a bundle: K students of
`--student-channels`), sampled with the one-step recipe.

    python benchmarks/msd_latency.py --dataset digits [--student-channels 24,48 48 32] [--out result.json]
        [--markdown docs/msd-latency-digits.md]

Prints one JSON object (with provenance).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import provenance, utc_now  # noqa: E402
from components.atomic import write_text  # noqa: E402

SHAPES = {"digits": (1, 8), "fashion16": (1, 16)}          # (channels, resolution) of each leaderboard dataset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(SHAPES), default="digits")
    p.add_argument("--student-channels", nargs="+", default=["24,48"],
                   help="one bundle per value: its students' UNet widths per level, comma-separated")
    p.add_argument("--students", type=int, default=4, help="K: students per bundle")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=50, help="one-image generations per p50")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--markdown", type=Path, help="also write a markdown page of the table (with provenance) here")
    args = p.parse_args(argv)
    try:
        args.student_channels = [tuple(int(v) for v in s.split(",")) for s in args.student_channels]
    except ValueError:
        p.error(f"--student-channels: expected comma-separated integers per bundle, got {args.student_channels}")
    if args.students < 1 or args.rounds < 1 or args.repeats < 1:
        p.error("--students, --rounds and --repeats must be at least 1")
    return args


def teacher_config(dataset: str):
    """The teacher section of the dataset's run config (the leaderboard spec's), read without the checks a run makes
    (the data need not be here: only the architecture is used)."""
    from benchmarks.leaderboard import ROOT, SPEC, load_spec
    from components.config import TeacherConfig, parse_section
    from components.params import merge, read_params, read_yaml

    config = ROOT / load_spec(str(SPEC), dataset, None, None)["datasets"][dataset]["config"]
    params = (read_yaml(config, f"run config '{config}'", "a ZenML run config") or {}).get("parameters") or {}
    base = read_params(str(ROOT / params["params_file"])) if params.get("params_file") else {}
    return parse_section(TeacherConfig, merge(base.get("teacher") or {}, params.get("teacher") or {}), "teacher")


def models(dataset: str, bundles: list[tuple[int, ...]], K: int) -> dict:
    """{name: one-step denoiser}: the single student (the teacher's architecture) and one routed bundle per width."""
    import torch

    from components.diffusion.denoiser import EDMDenoiser
    from components.diffusion.routed import RoutedDenoiser
    from components.methods.msd import class_subsets
    from components.nets import build_unet

    t, (C, H), classes = teacher_config(dataset), SHAPES[dataset], 10

    def student(channels):
        torch.manual_seed(0)
        d = EDMDenoiser(build_unet(H, C, classes, channels, t.layers_per_block, t.norm_num_groups), classes,
                        t.sigma_min, t.sigma_max, 0.5).eval()
        d.sampling = {"sampler": "fewstep", "sigmas": [t.sigma_max, 0.0]}
        return d

    subsets = class_subsets([1] * classes, K)
    out = {f"single {tuple(t.block_out_channels)}": student(tuple(t.block_out_channels))}
    for channels in bundles:
        out[f"{K} routed {channels}"] = RoutedDenoiser([student(channels) for _ in subsets], subsets).eval()
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    prov = provenance(sys.argv[1:] if argv is None else list(argv))
    from components.metrics.evaluate import latency_p50
    from components.training import pin_threads

    pin_threads(2)
    ms = models(args.dataset, args.student_channels, args.students)
    single = next(iter(ms))
    p50 = {name: [] for name in ms}
    for _ in range(args.rounds):                          # interleaved: drift hits every model alike
        for name, m in ms.items():
            p50[name].append(1000 * latency_p50(m, m.num_classes, args.repeats))
    result = {"dataset": args.dataset, "rounds": args.rounds, "repeats": args.repeats, "models": {
        name: {"parameters_per_image": getattr(m, "active_parameters", None) or sum(p.numel() for p in m.parameters()),
               "p50_ms_per_round": [round(v, 3) for v in p50[name]],
               "p50_ms_median": round(statistics.median(p50[name]), 3),
               "ratio_to_single_median": round(statistics.median(a / b for a, b in zip(p50[name], p50[single])), 3)}
        for name, m in ms.items()}, "provenance": {**prov, "finished_utc": utc_now()}}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        write_text(args.out, text)
    if args.markdown:
        write_text(args.markdown, page(result))
    return result


def page(result: dict) -> str:
    """The result as a markdown page: what was measured, where and when, and the table."""
    prov = result["provenance"]
    lines = [f"# Batch-1 latency of routed MSD bundles ({result['dataset']})", "",
             "Written by `benchmarks/msd_latency.py`; do not edit by hand. One-step sampling of one image "
             "(sampler included), freshly initialised networks of each architecture, measured interleaved: "
             f"{result['rounds']} rounds, each model's p50 over {result['repeats']} generations per round.", "",
             f"Measured {prov['started_utc']} to {prov['finished_utc']} on {prov['machine']}, at commit "
             f"`{prov['commit']}`. Command: `python benchmarks/msd_latency.py {' '.join(prov['argv'])}`.", "",
             "| model | parameters per image | p50 ms (median over rounds) | p50 / single's (median over rounds) |",
             "|---|---|---|---|"]
    for name, m in result["models"].items():
        lines.append(f"| {name} | {m['parameters_per_image']:,} | {m['p50_ms_median']:.2f} | "
                     f"{m['ratio_to_single_median']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
