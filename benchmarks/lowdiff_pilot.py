"""A small LowDiff pilot on Fashion-MNIST 8x8 -> 16x16 (docs/lowdiff-pilot.md): which start noise, step counts and
training noise range the leaderboard's cascade row uses. NOT leaderboard figures: one training seed, a short budget,
one sampling seed, fewer samples; the leaderboard (benchmarks/leaderboard.py, rows "Single resolution, LowDiff
baseline" and "LowDiff 8->16") is the measurement.

What it does, all on the same data, feature net and seed:
  - trains the one-level baseline (16x16, the method's own code) for --iterations x --batch images, and two-level
    cascades on the same full-resolution-equivalent budget (--iterations / 0.625), one per training noise cap of the
    16x16 level (--caps);
  - scores each model under several sampling recipes (FID vs the real test images on --samples class-balanced
    samples, the project's feature net trained here for --feature-steps steps; class accuracy);
  - times each recipe: images/s at batch 256 (one warm-up batch, then --timed-batches) and p50 ms at batch 1 (one
    warm-up, then --latency-repeats) - sampling time does not depend on the weights.

    python benchmarks/lowdiff_pilot.py --write-docs          # ~15 min on 2 CPU cores; prints JSON, writes the page
Run it alone: a second torch process on 2 cores distorts every timing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINE = {"resolutions": [16], "steps": [8], "start_sigma": []}
RECIPES = [((8, 3), 1.0), ((8, 4), 1.0), ((8, 4), 2.0), ((8, 5), 5.0), ((6, 4), 1.0), ((4, 4), 1.0)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "fashion_mnist.npz"))
    p.add_argument("--iterations", type=int, default=400, help="the baseline's iterations (cascades: / 0.625)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--caps", default="1,5", help="training noise caps of the 16x16 level (train_sigma_max)")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--feature-steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--widths", default="32,64,64", help="the UNet's block_out_channels (the Fashion teacher's)")
    p.add_argument("--timed-batches", type=int, default=4, help="timed batches of 256 per recipe")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed batch-1 generations per recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-docs", nargs="?", const=str(ROOT / "docs" / "lowdiff-pilot.md"), default=None)
    return p.parse_args(argv)


def speed(model, labels, repeats: int) -> tuple[float, float]:
    """(images/s at batch 256 after one warm-up batch, p50 ms at batch 1: components.metrics.evaluate.latency_p50)."""
    from components.diffusion.generate import generate
    from components.metrics.evaluate import latency_p50

    generate(model, labels[:256], 0, 256)
    timed = generate(model, labels[256:], 1, 256)
    return len(timed.labels) / timed.seconds, 1000 * latency_p50(model, model.num_classes, repeats)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.provenance import provenance, utc_now
    from components.config import DataConfig, ExtractorConfig, FeatureNetConfig, TeacherConfig
    from components.data import load_dataset
    from components.diffusion.cascade import cascade_recipe, full_resolution_nfe
    from components.diffusion.generate import balanced_labels, generate
    from components.methods import build_method, distill
    from components.metrics.evaluate import extractor_for, reference_features, score_samples
    from components.metrics.features import train_feature_net
    from components.teacher import build_teacher

    prov = provenance(sys.argv[1:] if argv is None else list(argv))
    data = load_dataset(DataConfig(path=args.data, resolution=16))     # Fashion-MNIST: its own train/test split
    widths = build_teacher(TeacherConfig(block_out_channels=tuple(int(w) for w in args.widths.split(","))),
                           data.num_classes, 1, 16)          # the UNet's shape and sigma range only
    fnet, _ = train_feature_net(FeatureNetConfig(train_steps=args.feature_steps, seed=args.seed), data, progress=False)
    ex = extractor_for(ExtractorConfig(), fnet)
    refs = reference_features(ex, data)
    labels = balanced_labels(args.samples, data.num_classes)
    common = {"method": "lowdiff", "batch_size": args.batch, "log_every": 50, "checkpoint_every": 0, "fid_every": 0,
              "seed": args.seed}
    models = {"single 16x16": ({**common, **BASELINE, "iterations": args.iterations}, [((8,), None)])}
    for cap in (float(c) for c in args.caps.split(",")):
        cfg = {**common, "resolutions": [8, 16], "steps": [8, 4], "start_sigma": [1.0], "train_sigma_max": [cap],
               "iterations": round(args.iterations / 0.625)}
        models[f"cascade 8->16, trained on sigma <= {cap:g}"] = (cfg, RECIPES)
    rows, timing = [], {}
    for name, (cfg, recipes) in models.items():
        t0 = time.perf_counter()
        method = build_method(widths, cfg, data)
        distill(method, progress=True)
        model, seconds = method.student(), time.perf_counter() - t0
        for steps, s0 in recipes:
            model.sampling = (cascade_recipe([16], steps, [], model.sigma_max) if s0 is None
                              else cascade_recipe([8, 16], steps, [s0], model.sigma_max))
            gen = generate(model, labels, args.seed, 500)
            m, _ = score_samples(gen, name, ex, fnet, refs)
            recipe = "heun 8 at 16x16" if s0 is None else f"heun {steps[0]} at 8x8, {steps[1]} at 16x16 from {s0:g}"
            if recipe not in timing:
                timing[recipe] = speed(model, balanced_labels(256 * (1 + args.timed_batches), data.num_classes),
                                       args.latency_repeats)
            rows.append({"model": name, "recipe": recipe, "fid": m["fid"], "class_acc": m["class_acc"],
                         "nfe": gen.nfe, "fre_nfe": full_resolution_nfe(model.sampling),
                         "images_per_s_b256": timing[recipe][0], "p50_ms_b1": timing[recipe][1],
                         "train_seconds": seconds, "iterations": cfg["iterations"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"rows": rows, "args": vars(args), "provenance": {**prov, "finished_utc": utc_now()}}
    if args.write_docs:
        write_page(result, Path(args.write_docs))
    print(json.dumps(result))
    return result


def write_page(result: dict, path: Path) -> None:
    from components.atomic import write_json, write_text

    write_json(path.with_suffix(".json"), result)
    a, prov = result["args"], result["provenance"]
    base = next(r for r in result["rows"] if r["model"] == "single 16x16")
    lines = ["# LowDiff pilot (Fashion-MNIST 8x8 -> 16x16)", "",
             "Generated by `benchmarks/lowdiff_pilot.py --write-docs`: do not edit by hand. A pilot, **not leaderboard "
             f"figures**: one training seed ({a['seed']}), {a['iterations']} iterations x {a['batch']} images for the "
             "baseline and the same full-resolution-equivalent budget for each cascade, one sampling seed, "
             f"{a['samples']} samples per FID (feature net trained here for {a['feature_steps']} steps), vs the 10,000 "
             "test images. It chose the sampling recipe and training noise range of the leaderboard's `LowDiff 8->16` "
             "row ([lowdiff.md](lowdiff.md)).", "",
             f"Measured {prov['started_utc']} to {prov['finished_utc']} on {prov['machine']}, at commit "
             f"`{prov['commit']}`. Command: `python benchmarks/lowdiff_pilot.py {' '.join(prov['argv'])}`.", "",
             "| model | recipe | NFE | full-res NFE | FID | FID / baseline | class acc | images/s (batch 256) | "
             "throughput x | p50 ms (batch 1) | p50 x |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['recipe']} | {r['nfe']} | {r['fre_nfe']:.2f} | {r['fid']:.2f} | "
                     f"{r['fid'] / base['fid']:.2f} | {r['class_acc']:.3f} | {r['images_per_s_b256']:.0f} | "
                     f"{r['images_per_s_b256'] / base['images_per_s_b256']:.2f} | {r['p50_ms_b1']:.1f} | "
                     f"{r['p50_ms_b1'] / base['p50_ms_b1']:.2f} |")
    lines += ["", "Sampling time does not depend on the weights: a recipe's images/s and p50 are the same for every "
              "model sampled with it (measured once per recipe)."]
    write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
