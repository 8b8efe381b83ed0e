"""Where the LowDiff cascade's FID gap comes from (docs/lowdiff-recipes.md): the leaderboard's trained `LowDiff 8->16`
cascades (its cache, one per training seed) sampled with other recipes - no retraining - and two diagnostics:

  - `real 8x8 -> 16x16`: the 16x16 level run from the real test images' 8x8 views (their labels) instead of the
    generated 8x8 level: the refinement alone. Near the baseline's FID = the 8x8 level is what is missing.
  - `8x8 level only`: the generated 8x8 level, upsampled, against the real test images' 8x8 views upsampled (FID of
    the low-resolution result itself, on the same feature net).

NOT leaderboard figures: one sampling seed and --samples class-balanced samples per FID (the leaderboard: 3 x
10,000), so compare the rows of this page with each other (the `as trained` row is the leaderboard's recipe on the
same footing). images/s at batch 256: one warm-up batch, then 4 timed (as the leaderboard's cascade_figures),
measured once per recipe on the first seed's model (sampling time does not depend on the weights).

    python benchmarks/lowdiff_recipes.py --write-docs      # after the leaderboard's LowDiff rows; ~25 min on 2 cores
Run it alone: a second torch process on 2 cores distorts every timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASCADE_ROW, BASELINE_ROW = "LowDiff 8->16", "Single resolution, LowDiff baseline"
# (Heun steps at 8x8, Heun steps at 16x16, start sigma of the 16x16 level); the first is the row's own recipe.
# 16 at 8x8 asks whether the 8x8 level's steps are the gap; the last three spend at most 10 full-resolution NFE
# (1.5 x the baseline's throughput) with more steps at 8x8, where an evaluation costs a quarter
RECIPES = [(8, 4, 1.0), (16, 4, 1.0), (14, 2, 0.5), (12, 2, 0.5), (14, 2, 1.0)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=str(ROOT / ".benchmarks" / "leaderboard"), help="the leaderboard's cache")
    p.add_argument("--samples", type=int, default=5000, help="class-balanced samples per FID")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--write-docs", nargs="?", const=str(ROOT / "docs" / "lowdiff-recipes.md"), default=None)
    p.add_argument("--from-json", action="store_true",
                   help="run nothing: re-render the --write-docs page from its JSON")
    return p.parse_args(argv)


def trained_folders(ctx, spec: dict, row_name: str, dataset: str) -> dict[int, Path]:
    """{training seed: the leaderboard's saved model folder} of a row (the seeds it has trained)."""
    from benchmarks.leaderboard import entry_path, for_dataset

    row = for_dataset(next(r for r in spec["rows"] if r["name"] == row_name), dataset)
    folders = {s: entry_path(ctx, row.get("distill") or {}, s).with_suffix("") for s in spec["train_seeds"]}
    return {s: f for s, f in folders.items() if (f / "cascade.json").is_file()}


def refine_real(model, x_low, labels, seed: int, steps: int, sigma_start: float, batch: int = 500):
    """The cascade's top level run from given lower-level images (the real ones): upsample, noise to sigma_start,
    Heun to 0 with the upsampled images as the low-resolution input - sample_cascade's last level."""
    import torch

    from components.diffusion.cascade import start_level
    from components.diffusion.generate import Generated
    from components.diffusion.noise_schedule import karras_sigmas
    from components.diffusion.samplers import sample_heun

    g, out, full = torch.Generator().manual_seed(seed), [], model.resolutions[-1]
    grid = karras_sigmas(steps, model.sigma_min, sigma_start)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            x, up = start_level(x_low[i:i + batch], full, sigma_start, g)
            model.lowres = up
            try:
                out.append(sample_heun(model, x, grid, {"class_labels": labels[i:i + batch]}, generator=g).clamp(-1, 1))
            finally:
                model.lowres = None
    return Generated(torch.cat(out), labels, 2 * steps - 1, 0.0)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        if not args.write_docs:
            raise SystemExit("lowdiff_recipes: --from-json re-renders the --write-docs page; give --write-docs")
        result = json.loads(Path(args.write_docs).with_suffix(".json").read_text())
        write_page(result, Path(args.write_docs))
        return result
    import torch

    from benchmarks.leaderboard import SPEC, Context, load_spec, run_config, shared_artifacts
    from benchmarks.provenance import provenance, utc_now
    from components.diffusion import load_denoiser
    from components.diffusion.cascade import cascade_recipe, downsample, full_resolution_nfe, upsample
    from components.diffusion.generate import balanced_labels, generate
    from components.metrics.evaluate import score_samples
    from components.metrics.extractors import extract
    from components.metrics.fid import FeatureSet, fid
    from components.training import pin_threads

    prov = provenance(sys.argv[1:] if argv is None else list(argv))
    dataset = "fashion16"
    spec = load_spec(str(SPEC), dataset, f"{BASELINE_ROW},{CASCADE_ROW}", None)
    config = spec["datasets"][dataset]["config"]
    cfg = run_config(config)
    pin_threads(cfg.compute.threads)
    ctx = Context(dataset, config, cfg, shared_artifacts(cfg, Path(args.cache), False), spec["sample_seeds"])
    cascades, baselines = (trained_folders(ctx, spec, r, dataset) for r in (CASCADE_ROW, BASELINE_ROW))
    if not cascades:
        raise SystemExit(f"lowdiff_recipes: no trained '{CASCADE_ROW}' model in {args.cache}: run the leaderboard's "
                         f"LowDiff rows first")
    labels = balanced_labels(args.samples, ctx.data.num_classes)
    x_ev, y_ev = ctx.data.split("eval")
    per_class = [torch.nonzero(y_ev == c).flatten() for c in range(ctx.data.num_classes)]
    # the real test images in the samples' label order (class-balanced, cycling through each class's images)
    idx = torch.stack([per_class[int(c)][i // ctx.data.num_classes % len(per_class[int(c)])]
                       for i, c in enumerate(labels)])
    real8 = downsample(x_ev[idx], 2)
    ref8 = FeatureSet(extract(ctx.extractor, upsample(downsample(x_ev, 2), 2)), "real-eval 8x8 up", ctx.extractor.name)
    real_up = FeatureSet(extract(ctx.extractor, upsample(real8, 2)), "real 8x8 up", ctx.extractor.name)  # the check

    def score(gen, who):
        m, _ = score_samples(gen, who, ctx.extractor, ctx.fnet, ctx.refs)
        return {"fid": m["fid"], "class_acc": m["class_acc"], "nfe": gen.nfe}

    timing, rows = {}, []
    for seed, folder in sorted(baselines.items()):
        model = load_denoiser(folder, what="cached student")
        gen = generate(model, labels, args.sample_seed, cfg.evaluation.batch_size)
        rows.append({"model": BASELINE_ROW, "train_seed": seed, "recipe": "as trained (8 at 16x16)",
                     "fre_nfe": full_resolution_nfe(model.sampling), **score(gen, "baseline")})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if "baseline" not in timing:
            generate(model, ctx.labels[:256], 0, 256)
            timed = generate(model, ctx.labels[:1024], 1, 256)
            timing["baseline"] = len(timed.labels) / timed.seconds
    for seed, folder in sorted(cascades.items()):
        model = load_denoiser(folder, what="cached student")
        for n8, n16, s0 in RECIPES:
            model.sampling = cascade_recipe([8, 16], [n8, n16], [s0], model.sigma_max)
            recipe = f"{n8} at 8x8, {n16} at 16x16 from {s0:g}" + (" (as trained)" if (n8, n16, s0) == RECIPES[0]
                                                                     else "")
            gen = generate(model, labels, args.sample_seed, cfg.evaluation.batch_size)
            if recipe not in timing:
                generate(model, ctx.labels[:256], 0, 256)
                timed = generate(model, ctx.labels[:1024], 1, 256)
                timing[recipe] = len(timed.labels) / timed.seconds
            rows.append({"model": CASCADE_ROW, "train_seed": seed, "recipe": recipe,
                         "fre_nfe": full_resolution_nfe(model.sampling), **score(gen, "cascade")})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        n8, n16, s0 = RECIPES[0]
        gen = refine_real(model, real8, labels, args.sample_seed, n16, s0)
        rows.append({"model": CASCADE_ROW, "train_seed": seed, "recipe": f"real 8x8 -> {n16} at 16x16 from {s0:g}",
                     "fre_nfe": gen.nfe, **score(gen, "refine-real")})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        low = generate_low(model, labels, args.sample_seed, n8, cfg.evaluation.batch_size)
        feats = FeatureSet(extract(ctx.extractor, upsample(low, 2)), "cascade 8x8 up", ctx.extractor.name)
        rows.append({"model": CASCADE_ROW, "train_seed": seed, "recipe": f"8x8 level only ({n8} steps), upsampled, "
                     "vs the real 8x8 views upsampled", "fre_nfe": (2 * n8 - 1) / 4,
                     "fid": fid(feats.stats(), ref8.stats(), ctx.extractor.name).fid,
                     "fid_real_8x8_samples": fid(real_up.stats(), ref8.stats(), ctx.extractor.name).fid,
                     "class_acc": float((ctx.fnet.embed(upsample(low, 2))[1] == labels).float().mean()),
                     "nfe": 2 * n8 - 1})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = summarize(rows, timing)
    result = {"rows": rows, "summary": summary, "timing_images_per_s_b256": timing, "args": vars(args),
              "protocol": {"samples": args.samples, "sample_seed": args.sample_seed,
                           "feature_net": ctx.extractor.name, "reference": "real eval split (10,000 test images)"},
              "provenance": {**prov, "finished_utc": utc_now()}}
    if args.write_docs:
        write_page(result, Path(args.write_docs))
    print(json.dumps(result))
    return result


def generate_low(model, labels, seed: int, steps: int, batch: int = 500):
    """The cascade's lowest level alone, as sample_cascade runs it (full-resolution noise, pooled; on one batch the
    noise generate draws for the same seed): images in [-1, 1] at the lowest resolution."""
    import torch

    from components.diffusion.cascade import noise_downsample
    from components.diffusion.noise_schedule import karras_sigmas
    from components.diffusion.samplers import sample_heun

    g, out = torch.Generator().manual_seed(seed), []
    grid = karras_sigmas(steps, model.sigma_min, model.sigma_max)
    factor = model.resolutions[-1] // model.resolutions[0]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            z = torch.randn((len(labels[i:i + batch]), *model.image_shape), generator=g)
            x = noise_downsample(z, factor) * model.sigma_max
            out.append(sample_heun(model, x, grid, {"class_labels": labels[i:i + batch]}, generator=g).clamp(-1, 1))
    return torch.cat(out)


def summarize(rows: list[dict], timing: dict) -> list[dict]:
    """Per (model, recipe): FID mean +- std over the training seeds, class accuracy, images/s at batch 256."""
    out = []
    for key in dict.fromkeys((r["model"], r["recipe"]) for r in rows):
        rs = [r for r in rows if (r["model"], r["recipe"]) == key]
        fids = [r["fid"] for r in rs]
        name = "baseline" if key[0] == BASELINE_ROW else key[1]
        out.append({"model": key[0], "recipe": key[1], "seeds": len(rs), "fid": statistics.fmean(fids),
                    "fid_std": statistics.pstdev(fids), "class_acc": statistics.fmean(r["class_acc"] for r in rs),
                    "nfe": rs[0]["nfe"], "fre_nfe": rs[0]["fre_nfe"], "images_per_s_b256": timing.get(name)})
    return out


def write_page(result: dict, path: Path) -> None:
    from components.atomic import write_json, write_text

    write_json(path.with_suffix(".json"), result)
    prov, proto = result["provenance"], result["protocol"]
    s = result["summary"]
    base = next(r for r in s if r["model"] == BASELINE_ROW)
    lines = ["# LowDiff: where the cascade's FID gap comes from", "",
             "Generated by `benchmarks/lowdiff_recipes.py --write-docs`: do not edit by hand. The leaderboard's "
             "trained `LowDiff 8->16` cascades and `Single resolution, LowDiff baseline` models (one per training "
             "seed, from its cache) sampled with other recipes, **no retraining**; NOT leaderboard figures: "
             f"{proto['samples']} class-balanced samples and one sampling seed ({proto['sample_seed']}) per FID "
             "(the leaderboard: 3 x 10,000), so compare the rows of this page with each other "
             f"(feature net {proto['feature_net']}, vs {proto['reference']}).", "",
             f"Measured {prov['started_utc']} to {prov['finished_utc']} on {prov['machine']}, at commit "
             f"`{prov['commit']}`. Command: `python benchmarks/lowdiff_recipes.py {' '.join(prov['argv'])}`.", "",
             "| model | recipe | training seeds | NFE | full-res NFE | FID | FID / baseline | class acc | "
             "images/s (batch 256) | throughput x |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in s:
        speed = r["images_per_s_b256"]
        lines.append(f"| {r['model']} | {r['recipe']} | {r['seeds']} | {r['nfe']} | {r['fre_nfe']:.2f} | "
                     f"{r['fid']:.2f} +- {r['fid_std']:.2f} | {r['fid'] / base['fid']:.2f} | {r['class_acc']:.3f} | "
                     + (f"{speed:.0f} | {speed / base['images_per_s_b256']:.2f} |" if speed else "- | - |"))
    low = [r for r in result["rows"] if "fid_real_8x8_samples" in r]
    if low:
        lines += ["", "The `8x8 level only` row is scored against another reference than the other rows (the real test "
                  "images' 8x8 views, upsampled), so its FID / baseline is not a like-for-like ratio. As a check of "
                  "that reference, the same test images' 8x8 views in the samples' label order score "
                  f"{statistics.fmean(r['fid_real_8x8_samples'] for r in low):.2f} against it (the same images: a "
                  "check, not a floor)."]
    write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
