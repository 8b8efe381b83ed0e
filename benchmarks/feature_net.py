"""Which feature net makes an honest FID space? Trains feature-net variants on the train split and, for
each, scores the same teacher samples and the real images:

- floor: FID(real train images, eval split) at evaluation.num_samples - small next to the models' FIDs
  when the features describe the data, not which split an image came from;
- teacher FID vs the eval split and vs the train split - a feature net that memorised the train split
  makes the teacher (trained on it too) look far closer to it than to held-out images;
- eval-split accuracy of the classifier head;
- the size check: FID of two disjoint random train subsets as large as the eval split, beside FID of
  one such subset vs the eval split (mean of 3 draws). When the first is as large as the second, the
  floor is the bias of a small reference set, not a feature space that tells the splits apart.

    python benchmarks/feature_net.py                        # the digits (configs/dmd2_local.yaml), default variants
    python benchmarks/feature_net.py --write-docs           # + docs/feature-net.md (date, machine, commit)

The data and teacher come from the leaderboard's cache (benchmarks/leaderboard.py builds them if missing).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import leaderboard as lb  # noqa: E402
from benchmarks.provenance import provenance, utc_now  # noqa: E402

# name -> features overrides (over the config's features section)
VARIANTS = {
    "as trained so far (600 steps)": {"shift": 0, "noise": 0.0},
    "150 steps": {"shift": 0, "noise": 0.0, "train_steps": 150},
    "shift 1": {"shift": 1, "noise": 0.0},
    "shift 1 + noise 0.2": {"shift": 1, "noise": 0.2},
    "shift 2 + noise 0.2": {"shift": 2, "noise": 0.2},
}
PAGE = ROOT / "docs" / "feature-net.md"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dmd2_local.yaml", help="run config (params_file + overrides)")
    p.add_argument("--cache", default=str(lb.CACHE))
    p.add_argument("--write-docs", nargs="?", const=str(PAGE), default=None, metavar="PAGE")
    args = p.parse_args(argv)
    prov = provenance(sys.argv[1:] if argv is None else list(argv))

    from components.data import ImageDataset
    from components.diffusion import load_denoiser
    from components.diffusion.generate import balanced_labels, generate
    from components.metrics import FeatureSet, fid, train_feature_net
    from components.metrics.evaluate import extractor_for, real_floor, reference_features
    from components.metrics.extractors import extract
    from components.teacher import teacher_sampling
    from components.training import pin_threads

    cfg = lb.run_config(args.config)
    pin_threads(cfg.compute.threads)
    paths = lb.shared_artifacts(cfg, Path(args.cache), need_pairs=False)
    data = ImageDataset.load(paths["dataset"])
    teacher = load_denoiser(paths["teacher"], what="teacher")
    teacher.sampling = teacher_sampling(cfg.teacher, teacher)
    n = cfg.evaluation.num_samples
    print(f"sampling {n} teacher images", file=sys.stderr)
    gen = generate(teacher, balanced_labels(n, data.num_classes), cfg.evaluation.seed, cfg.evaluation.batch_size,
                   progress=True, desc="teacher")
    rows = []
    for name, overrides in VARIANTS.items():
        fcfg = cfg.features.model_copy(update=overrides)
        net, info = train_feature_net(fcfg, data, progress=False)
        ex = extractor_for(cfg.evaluation.extractor(), net)
        refs = reference_features(ex, data)
        floor = real_floor(refs, n, cfg.evaluation.seed)["fid"]
        stats = FeatureSet(extract(ex, gen.images), "teacher", ex.name).stats()
        t_eval = fid(stats, refs.eval.stats(), ex.name).fid
        t_train = fid(stats, refs.train.stats(), ex.name).fid
        same, cross = size_check(refs, ex.name)
        row = {"variant": name, **overrides, "train_steps": fcfg.train_steps, "eval_accuracy": info["eval_accuracy"],
               "floor": floor, "teacher_fid_eval": t_eval, "teacher_fid_train": t_train,
               "teacher_excess": t_eval - floor, "train_vs_train": same, "train_vs_eval": cross,
               "subset_size": len(refs.eval.features)}
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    result = {"config": args.config, "num_samples": n, "teacher": paths["teacher"].name,
              "rows": rows, "provenance": {**prov, "finished_utc": utc_now()}}
    print("\n" + table(result))
    print(json.dumps(result))
    if args.write_docs:
        from components.atomic import write_text

        write_text(args.write_docs, page(result))
    return result


def size_check(refs, feature_net: str, draws: int = 3) -> tuple[float, float]:
    """-> (FID of two disjoint train subsets of the eval split's size, FID of one vs the eval split),
    means over `draws` seeded draws."""
    import numpy as np

    from components.metrics import FeatureSet, fid

    train, ev = refs.train.features, refs.eval.features
    m = len(ev)
    if len(train) < 2 * m:
        return float("nan"), float("nan")
    stats = lambda f: FeatureSet(f, "subset", feature_net).stats()          # noqa: E731
    same, cross = [], []
    for draw in range(draws):
        perm = np.random.default_rng(draw).permutation(len(train))
        a, b = stats(train[perm[:m]]), stats(train[perm[m:2 * m]])
        same.append(fid(a, b, feature_net).fid)
        cross.append(fid(a, stats(ev), feature_net).fid)
    return float(np.mean(same)), float(np.mean(cross))


def table(result: dict) -> str:
    m = result["rows"][0]["subset_size"]
    lines = ["| feature net | eval accuracy | floor | teacher FID vs eval | teacher FID vs train | teacher excess "
             f"| train {m} vs train {m} | train {m} vs eval {m} |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['eval_accuracy']:.3f} | {r['floor']:.2f} | {r['teacher_fid_eval']:.2f} "
                     f"| {r['teacher_fid_train']:.2f} | {r['teacher_excess']:.2f} | {r['train_vs_train']:.2f} "
                     f"| {r['train_vs_eval']:.2f} |")
    return "\n".join(lines)


def page(result: dict) -> str:
    prov = result["provenance"]
    return "\n".join([
        "# Feature net study", "",
        f"Generated by `benchmarks/feature_net.py` on {prov['finished_utc']} on {prov['machine']}, at commit "
        f"`{prov['commit']}`. Command: `{shlex.join(['python', 'benchmarks/feature_net.py', *prov['argv']])}`. "
        "Do not edit by hand.", "",
        f"The same {result['num_samples']} teacher samples ({result['config']}) and the real splits, scored in the "
        "feature space of each variant (all trained on the train split only). Floor: real train images vs the "
        "eval split at the same count; see [evaluation.md](evaluation.md#feature-nets).", "",
        table(result), ""])


if __name__ == "__main__":
    main()
