"""The leaderboard: every distillation method's rows on the same data, teacher, feature net, reference
set, sample count and seeds, as one table (JSON), two pictures and docs/results.md.

    python benchmarks/leaderboard.py                              # every dataset and row of leaderboard.yaml
    python benchmarks/leaderboard.py --dataset digits --rows "DMD2 1-step,DMD2 4-step"
    python benchmarks/leaderboard.py --long 3                     # also train to 3x the iterations (convergence)
    python benchmarks/leaderboard.py --write-docs                 # + docs/results/<dataset>.json, pictures, page
    python benchmarks/leaderboard.py --from-json                  # run nothing: re-render docs/results.md

Protocol (docs/evaluation.md). Per dataset, one run config (configs/*.yaml: params_file + overrides)
gives the data, teacher, feature net and evaluation settings; they are built once by the DVC stage
functions (components/stages.py) into .benchmarks/leaderboard/<name>-<key>/, each reused while the
data and the sections it is made of are unchanged. Every FID uses evaluation.num_samples
class-balanced samples against the real eval split; the real-vs-real floor uses the same count.
A teacher row is sampled once per sampling seed; a student row is distilled once per training
seed (distill.seed) and each student sampled once per sampling seed: FID is the mean over all of
them, `fid_std_train` the std of the per-training-seed means (what a rerun moves),
`fid_std_sample` the mean std over sampling seeds.
With --long F each student trains on to F x distill.iterations; the row's figures are still those of
the student at distill.iterations (no schedule depends on the length, so that student is the same),
and the checkpoint FIDs on the way (every distill.fid_every) make the convergence picture.
Each student seed's figures and curve are cached (<cache>/students/): a rerun, another row or a longer
--long distills only what is missing, so a leaderboard can be filled over several sittings; --fresh
distills everything again (the key holds the data, teacher, feature net, protocol and distill config,
not the code).
Run it alone: a second torch process on 2 cores distorts every timing.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance, utc_now  # noqa: E402

SPEC = ROOT / "benchmarks" / "leaderboard.yaml"
RESULTS = "docs/results"                 # <dataset>.json and pictures (relative to the checkout)
PAGE = "docs/results.md"
CACHE = ROOT / ".benchmarks" / "leaderboard"


class SpecError(SystemExit):
    """A bad leaderboard spec or argument: one line, exit status 2."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default=str(SPEC), help="datasets, seeds and rows (YAML)")
    p.add_argument("--dataset", default=None, help="comma-separated datasets of the spec (default: all)")
    p.add_argument("--rows", default=None, help="comma-separated row names of the spec (default: all)")
    p.add_argument("--train-seeds", type=int, default=None, help="use the first N training seeds of the spec")
    p.add_argument("--long", type=float, default=1.0, help="train each student to this many times distill.iterations "
                   "(>= 1); the row is still scored at distill.iterations, the curve goes on")
    p.add_argument("--cache", default=str(CACHE), help="folder for the shared data, feature net and teacher, and "
                   "each student seed's figures (reused when the same run went at least as far)")
    p.add_argument("--fresh", action="store_true", help="distill every student seed again (after a code change)")
    p.add_argument("--out", default=None, help="also write the JSON of the (last) dataset here")
    p.add_argument("--results", default=str(ROOT / RESULTS), help="--write-docs: folder of <dataset>.json + pictures")
    p.add_argument("--write-docs", nargs="?", const=str(ROOT / PAGE), default=None, metavar="PAGE",
                   help=f"write <results>/<dataset>.json and pictures, then render PAGE (default {PAGE}) from every "
                   "<dataset>.json there")
    p.add_argument("--from-json", action="store_true", help="run nothing: re-render the page from <results>/*.json")
    args = p.parse_args(argv)
    if args.long < 1:
        raise SpecError(f"--long: {args.long} must be >= 1 (a multiple of distill.iterations)")
    return args


# ----------------------------------------------------------------------------------------------
# the spec

def load_spec(path: str, datasets: str | None, rows: str | None, train_seeds: int | None) -> dict:
    """The spec, validated, narrowed to the chosen datasets and rows."""
    import yaml

    from components.config import ConfigError
    from components.params import read_yaml

    try:
        spec = read_yaml(path, f"leaderboard spec '{path}'", "a YAML mapping with datasets, seeds and rows")
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    if not isinstance(spec, dict) or not all(k in spec for k in ("datasets", "rows", "train_seeds", "sample_seeds")):
        raise SpecError(f"leaderboard spec '{path}': expected a mapping with datasets, rows, train_seeds, sample_seeds")
    for key in ("train_seeds", "sample_seeds"):
        seeds = spec[key]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise SpecError(f"leaderboard spec '{path}': {key} must be a non-empty list of integers, got {seeds!r}")
    if not isinstance(spec["datasets"], dict) or not spec["datasets"]:
        raise SpecError(f"leaderboard spec '{path}': datasets must map names to {{config: <run config>}}")
    for name, d in spec["datasets"].items():
        if not isinstance(d, dict) or not isinstance(d.get("config"), str):
            raise SpecError(f"leaderboard spec '{path}': datasets.{name} needs config: <a run config YAML>")
    spec = copy.deepcopy(spec)
    for row in spec.get("rows") or []:
        per = row.get("per_dataset") if isinstance(row, dict) else None
        good = lambda v: isinstance(v, dict) and set(v) == {"distill"} and isinstance(v["distill"], dict)  # noqa: E731
        if per is not None and not (isinstance(per, dict) and set(per) <= set(spec["datasets"])
                                    and all(map(good, per.values()))):
            raise SpecError(f"leaderboard spec '{path}': row {row.get('name')!r}: per_dataset must map dataset names "
                            f"({', '.join(spec['datasets'])}) to {{distill: <overrides>}}, got {per!r}")
    spec["rows"] = expand_sweeps(spec.get("rows") or [], path)
    names = [r.get("name") if isinstance(r, dict) else None for r in spec["rows"] or []]
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise SpecError(f"leaderboard spec '{path}': rows must be a list of {{name, distill}} with unique names")
    sweeps = sorted({r["train_as"] for r in spec["rows"] if "train_as" in r} - set(names))   # --rows CTM: all of it
    for arg, key, known in (("--dataset", "datasets", list(spec["datasets"])), ("--rows", "rows", names + sweeps)):
        given = datasets if key == "datasets" else rows
        wanted, unknown = pick_names(given, known) if given else (known, [])
        if unknown:
            raise SpecError(f"{arg}: unknown {unknown}; the spec has {known}")
        spec[key] = ({k: v for k, v in spec["datasets"].items() if k in wanted} if key == "datasets"
                     else [r for r in spec["rows"] if r["name"] in wanted or r.get("train_as") in wanted])
    if train_seeds is not None:
        if not 1 <= train_seeds <= len(spec["train_seeds"]):
            raise SpecError(f"--train-seeds: {train_seeds} must be 1..{len(spec['train_seeds'])}")
        spec["train_seeds"] = spec["train_seeds"][:train_seeds]
    yaml.safe_dump(spec)                                        # plain data only
    return spec


def for_dataset(row: dict, name: str) -> dict:
    """A row as it runs on dataset `name`: the keys of its `per_dataset.<name>.distill` replace its distill's (a
    guided chain that starts on that dataset's teacher grid); `per_dataset` itself is dropped. Rows without an
    entry for `name` are unchanged, so their cache keys are too."""
    extra = (row.get("per_dataset") or {}).get(name, {}).get("distill") or {}
    out = {k: v for k, v in row.items() if k != "per_dataset"}
    return {**out, "distill": {**(row.get("distill") or {}), **extra}} if extra else out


def expand_sweeps(rows: list, path: str) -> list:
    """A row with `sweep: {steps: [...], gamma: [...]}` (a CTM student: one network, any step count and gamma)
    becomes one row per (steps, gamma) - "<name> 1-step", "<name> 2-step, gamma 0.5", ... - that share one
    training per seed (`train_as`: the row's name) and differ only in `sampling` (1 step: one row, gamma
    does not matter)."""
    out = []
    for row in rows:
        if not isinstance(row, dict) or "sweep" not in row:
            out.append(row)
            continue
        sweep = row["sweep"]
        if isinstance(sweep, dict) and "w" in sweep:
            out += expand_guidance_sweep(row, path)
            continue
        steps, gammas = (sweep.get("steps"), sweep.get("gamma")) if isinstance(sweep, dict) else (None, None)
        if not (isinstance(steps, list) and steps and all(isinstance(n, int) and n >= 1 for n in steps)
                and isinstance(gammas, list) and gammas and all(isinstance(g, (int, float)) and 0 <= g <= 1
                                                                for g in gammas)):
            raise SpecError(f"leaderboard spec '{path}': row {row.get('name')!r}: sweep needs steps (integers >= 1) "
                            "and gamma (numbers in [0, 1]) lists")
        base = {k: v for k, v in row.items() if k != "sweep"}
        for n in steps:
            for g in ([gammas[0]] if n == 1 else gammas):
                name = f"{row['name']} 1-step" if n == 1 else f"{row['name']} {n}-step, gamma {g:g}"
                out.append({**base, "name": name, "train_as": row["name"], "sampling": {"steps": n, "gamma": g}})
    return out


def expand_guidance_sweep(row: dict, path: str) -> list[dict]:
    """A guided chain's row (distill.method guided with target_steps; `sweep: {w: [...], steps: [...]}`) -> one row
    per scored stage of the chain (its step count n: the guided stage's sampling_steps, then each halving's;
    `steps` picks some, default all) and w,
    "<name> <n>-step, w <w>", sharing one training of the whole chain per seed (`train_as`). The rows at
    the first w are the main table's; the others appear in the guidance table only (`sweep_only`)."""
    from components.config import ConfigError
    from components.methods.guided import halving_plan

    ws, distill = row["sweep"].get("w"), row.get("distill") or {}
    if not (isinstance(ws, list) and ws and all(isinstance(w, (int, float)) and w >= 0 for w in ws)):
        raise SpecError(f"leaderboard spec '{path}': row {row.get('name')!r}: sweep w needs a list of numbers >= 0")
    if distill.get("method") != "guided" or not isinstance(distill.get("target_steps"), int):
        raise SpecError(f"leaderboard spec '{path}': row {row.get('name')!r}: a sweep over w needs distill.method "
                        "guided with distill.target_steps (the chain)")
    scored = None
    for where in [None, *(row.get("per_dataset") or {})]:      # the row's chain, then each dataset's variant
        d = for_dataset(row, where)["distill"] if where else distill
        start = int(d.get("sampling_steps", 16))
        label = f"row {row.get('name')!r}" + (f" on {where}" if where else "")
        try:
            stages = [start, *halving_plan(start, d["target_steps"])]
        except ConfigError as exc:
            raise SpecError(f"leaderboard spec '{path}': {label}: {exc}") from None
        scored = row["sweep"].get("steps", scored or stages)   # which stages are scored (default: every one)
        if not (isinstance(scored, list) and scored and set(scored) <= set(stages)):
            raise SpecError(f"leaderboard spec '{path}': {label}: sweep steps {scored!r} must be step counts of "
                            f"the chain {stages}")
    base = {k: v for k, v in row.items() if k != "sweep"}
    return [{**base, "name": f"{row['name']} {n}-step, w {w:g}", "train_as": row["name"],
             "sampling": {"steps": n, "w": float(w)}, **({"sweep_only": True} if i else {})}
            for n in sorted(scored, reverse=True) for i, w in enumerate(ws)]


def pick_names(text: str, known: list[str]) -> tuple[list[str], list[str]]:
    """A comma-separated list of names, where a name may hold commas itself ("DMD2 4-step, SNR-spaced"):
    at each place the longest run of comma-separated pieces that is a known name -> (names, unknown pieces)."""
    parts, names, unknown, i = text.split(","), [], [], 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i, -1) if ",".join(parts[i:j]).strip() in known), None)
        if j is None:
            unknown.append(parts[i].strip())
            i += 1
        else:
            names.append(",".join(parts[i:j]).strip())
            i = j
    return names, unknown


def run_config(config: str):
    """A ZenML run config (params_file + section overrides) -> the resolved RunConfig, as the pipeline's."""
    from components.config import ConfigError
    from components.params import load_params, read_yaml

    path = ROOT / config if not Path(config).is_absolute() else Path(config)
    try:
        raw = read_yaml(path, f"run config '{config}'", "a ZenML run config with a parameters mapping") or {}
        params = dict(raw.get("parameters") or {}) if isinstance(raw, dict) else None
        if params is None:
            raise ConfigError(f"run config '{config}': expected a mapping with a 'parameters' mapping")
        params_file = params.pop("params_file", None)
        return load_params(str(ROOT / params_file) if params_file else None, **params)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


# ----------------------------------------------------------------------------------------------
# shared artifacts: data, feature net, teacher (and pairs when a row needs them), built once

def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shared_artifacts(cfg, cache: Path, need_pairs: bool) -> dict[str, Path]:
    """Run the DVC stage functions whose output is missing: dataset, feature_net, teacher (and pairs),
    each into cache/<name>-<key>/, keyed by what it is made of (the data's md5 and the sections it
    reads, plus its inputs' keys): a new feature net reuses the teacher and the other way round.
    -> {name: folder}."""
    import yaml

    from components import stages
    from components.data.versioning import dvc_md5

    s = cfg.as_dict()
    keys = {"dataset": _key(dvc_md5(s["data"]["path"]), s["data"])}
    keys["feature_net"] = _key(keys["dataset"], s["features"], s["compute"])
    keys["teacher"] = _key(keys["dataset"], s["teacher"], s["compute"])
    keys["pairs"] = _key(keys["teacher"], s["pairs"], s["compute"])
    paths = {name: cache / f"{name}-{key}" for name, key in keys.items()}
    cache.mkdir(parents=True, exist_ok=True)
    params = cache / f"params-{_key(s)}.yaml"
    params.write_text(yaml.safe_dump(s, sort_keys=False))
    todo = [("data", "dataset", []), ("features", "feature_net", ["--dataset", paths["dataset"]]),
            ("teacher", "teacher", ["--dataset", paths["dataset"], "--plots", paths["teacher"] / "loss.csv"])]
    if need_pairs:
        todo.append(("pairs", "pairs", ["--teacher", paths["teacher"]]))
    for stage, out, extra in todo:
        if paths[out].is_dir():
            continue
        print(f"building {stage} -> {paths[out]}", file=sys.stderr)
        if stages.main([stage, "--params", str(params), "--out", str(paths[out]), *map(str, extra)]) != 0:
            raise SystemExit(f"leaderboard: stage {stage} failed (see above)")
    return {k: v for k, v in paths.items() if v.is_dir()}


class Context:
    """One dataset's shared artifacts and sampling protocol."""

    def __init__(self, name: str, config: str, cfg, paths: dict[str, Path], sample_seeds: list[int]):
        import torch

        from components.data import ImageDataset
        from components.diffusion import load_denoiser, state_hash
        from components.diffusion.generate import balanced_labels
        from components.diffusion.pairs import load_pairs
        from components.metrics import FeatureNet, class_accuracy
        from components.metrics.evaluate import extractor_for, real_floor, reference_features
        from components.teacher import teacher_sampling

        self.name, self.config, self.cfg, self.paths = name, config, cfg, paths
        self.data = ImageDataset.load(paths["dataset"])
        self.fnet = FeatureNet.from_pretrained(paths["feature_net"])
        self.teacher = load_denoiser(paths["teacher"], what="teacher")
        self.teacher.sampling = teacher_sampling(cfg.teacher, self.teacher)
        self.teacher_sha = state_hash(self.teacher)
        self.pairs = load_pairs(paths["pairs"], self.teacher_sha) if "pairs" in paths else None
        self.extractor = extractor_for(cfg.evaluation.extractor(), self.fnet)
        self.refs = reference_features(self.extractor, self.data)
        self.n, self.sample_seeds = cfg.evaluation.num_samples, sample_seeds
        self.labels = balanced_labels(self.n, self.data.num_classes)
        self.floor = real_floor(self.refs, self.n, cfg.evaluation.seed)
        self.real_class_acc = class_accuracy(self.fnet, self.data)
        self.threads = torch.get_num_threads()
        self.commit = "unknown"                 # set by run_dataset: the commit each student seed records
        self.trained: set[Path] = set()         # the cache entries this run trained: --fresh trains a sweep's once

    def protocol(self) -> dict:
        return {"feature_net": self.extractor.name, "num_samples": self.n, "sample_seeds": self.sample_seeds,
                "reference": f"real eval split (n={len(self.refs.eval.features)})",
                "real_floor_fid": self.floor["fid"],
                "real_floor": f"{self.floor['samples']} vs {self.floor['reference']}",
                "real_eval_class_acc": self.real_class_acc, "teacher_sha256": self.teacher_sha,
                "torch_threads": self.threads, "image_shape": list(self.data.shape),
                "train_images": int((~self.data.is_eval).sum()), "eval_images": int(self.data.is_eval.sum())}

    def evaluate(self, model, who: str, guidance_scale: float = 1.0) -> dict:
        """FID (mean, std over the sampling seeds), excess FID, class accuracy, NFE, p50 latency at batch 1,
        throughput, parameters; sampled with CFG at `guidance_scale` (1 + w)."""
        from components.diffusion.generate import generate
        from components.metrics.evaluate import latency_p50, score_samples

        fids, accs, seconds = [], [], 0.0
        for seed in self.sample_seeds:
            gen = generate(model, self.labels, seed, self.cfg.evaluation.batch_size, guidance_scale=guidance_scale)
            m, _ = score_samples(gen, who, self.extractor, self.fnet, self.refs)
            fids.append(m["fid"])
            accs.append(m["class_acc"])
            seconds += gen.seconds
        fid = statistics.fmean(fids)
        return {"fid": fid, "fid_per_sample_seed": fids, "fid_std_sample": statistics.pstdev(fids),
                "excess_fid": fid - self.floor["fid"], "class_acc": statistics.fmean(accs), "nfe": gen.nfe,
                "latency_p50_ms": 1000 * latency_p50(model, self.data.num_classes, self.cfg.evaluation.latency_repeats,
                                                     guidance_scale=guidance_scale),
                "throughput": len(self.sample_seeds) * self.n / seconds,
                # what runs for one image (a routed MSD bundle: one student; it holds K of them)
                "parameters": getattr(model, "active_parameters", None) or sum(p.numel() for p in model.parameters()),
                **({"parameters_total": sum(p.numel() for p in model.parameters())}
                   if hasattr(model, "active_parameters") else {})}


# ----------------------------------------------------------------------------------------------
# rows

def teacher_rows(ctx: Context) -> list[dict]:
    """The teacher at its default sampler and at evaluation.teacher_nfe_steps (Heun), cached per teacher
    and protocol in the artifacts folder."""
    from components.metrics.evaluate import with_heun_steps

    # guidance_w (the w sweep of guided rows) does not change these rows: not in the key
    evaluation = ctx.cfg.evaluation.model_dump(mode="json", exclude={"guidance_w"})
    key = _key(ctx.paths["feature_net"].name, ctx.protocol(), evaluation)
    cache = ctx.paths["teacher"].parent / f"{ctx.paths['teacher'].name}-eval-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    rows = []
    default_steps = len(ctx.teacher.sampling["sigmas"]) - 1
    for steps in [default_steps, *sorted(set(ctx.cfg.evaluation.teacher_nfe_steps) - {default_steps}, reverse=True)]:
        model = ctx.teacher if steps == default_steps else with_heun_steps(ctx.teacher, steps)
        label = f"teacher (Heun, {steps} steps{', default' if steps == default_steps else ''})"
        print(f"{ctx.name}: {label}", file=sys.stderr)
        rows.append({"name": label, "kind": "teacher", "default": steps == default_steps, **ctx.evaluate(model, label)})
    from components.atomic import write_json

    write_json(cache, rows)
    return rows


def teacher_guidance_rows(ctx: Context, ws: list[float], default: dict) -> list[dict]:
    """The teacher with classifier-free guidance at each w (scale 1 + w: two network evaluations per step where
    w > 0) at its default sampler - the reference of a guided chain's rows at the same w. At w = 0 (scale 1: no
    guidance) it is the `default` teacher row, the same samples. Cached like teacher_rows, one file per w (a run
    stopped halfway keeps the w it finished); a file of the whole sweep written before that is still read."""
    from components.atomic import write_json

    evaluation = ctx.cfg.evaluation.model_dump(mode="json", exclude={"guidance_w"})
    stem = ctx.paths["teacher"].parent / f"{ctx.paths['teacher'].name}-guidance"
    whole = Path(f"{stem}-{_key(ctx.paths['feature_net'].name, ctx.protocol(), evaluation, ws)}.json")
    if whole.is_file():
        return json.loads(whole.read_text())
    rows = []
    for w in ws:
        label = f"teacher (CFG, w {w:g})"
        if float(w) == 0.0:
            rows.append({**{k: v for k, v in default.items() if k != "default"}, "name": label, "w": w})
            continue
        cache = Path(f"{stem}-w{w:g}-{_key(ctx.paths['feature_net'].name, ctx.protocol(), evaluation)}.json")
        if not cache.is_file():
            print(f"{ctx.name}: {label}", file=sys.stderr)
            write_json(cache, {"name": label, "kind": "teacher", "w": w,
                               **ctx.evaluate(ctx.teacher, label, 1.0 + w)})
        rows.append(json.loads(cache.read_text()))
    return rows


def row_distill(cfg, row: dict) -> dict:
    """A row's distill section: its overrides merged over the dataset config's (a row of another method
    keeps only the config's method-independent keys: components.params.merge_distill)."""
    from components.params import merge_distill

    return merge_distill(cfg.distill.model_dump(mode="json"), row.get("distill") or {})


def distill_one(ctx: Context, row: dict, seed: int, long: float) -> tuple[object, list[tuple[int, float]], float]:
    """One training seed of a row -> (the student at distill.iterations, checkpoint FIDs [(iteration,
    FID)] up to long x iterations, distillation seconds to distill.iterations without the FID callbacks)."""
    from components.methods import build_method, distill
    from components.metrics.evaluate import checkpoint_fid

    base = row_distill(ctx.cfg, row)
    iterations = int(base["iterations"])
    cfg = {**base, "seed": seed, "iterations": int(round(iterations * long)), "checkpoint_every": 0,
           "resume": "never", "fid_every": base["fid_every"] or iterations}
    method = build_method(ctx.teacher, cfg, ctx.data, ctx.pairs)
    ev = ctx.cfg.evaluation
    fid_at_checkpoints = checkpoint_fid(method, ctx.fnet, ctx.refs, ev.extractor(), ev.num_samples, ev.seed,
                                        ev.batch_size)           # the pipeline's own checkpoint FIDs
    curve, kept, spent = [], {}, [0.0]
    t0 = time.perf_counter()

    def callback(it: int, log_row: dict) -> None:
        t = time.perf_counter()
        fid_at_checkpoints(it, log_row)
        if "fid" in log_row:
            curve.append((it, log_row["fid"]))
        if it == iterations:
            kept["student"], kept["seconds"] = method.student(), t - t0 - spent[0]
        spent[0] += time.perf_counter() - t

    distill(method, progress=True, callback=callback)
    return kept["student"], curve, kept["seconds"]


def distill_chain(ctx: Context, row: dict, seed: int, long: float) -> tuple[dict, list, float, dict]:
    """A guided chain (distill.method guided with target_steps; components/methods/progressive.py) for one
    training seed -> ({step count: that stage's student}, [], seconds of the whole chain, {chain_seconds:
    {step count: seconds of distillation up to and including that stage}}). --long does not apply (no
    convergence curve for a chain)."""
    from components.methods import build_method, distill, parse_distill_config
    from components.methods.progressive import halvings, stage_one

    cfg = parse_distill_config({**row_distill(ctx.cfg, row), "seed": seed, "checkpoint_every": 0, "resume": "never",
                                "fid_every": 0})
    t0 = time.perf_counter()
    method = build_method(ctx.teacher, stage_one(cfg), ctx.data)
    distill(method, progress=True)
    students = {cfg.sampling_steps: method.student()}
    upto = {str(cfg.sampling_steps): time.perf_counter() - t0}
    for steps, halving in halvings(cfg):
        method = build_method(students[2 * steps], halving, ctx.data)
        distill(method, progress=True)
        students[steps] = method.student()
        upto[str(steps)] = time.perf_counter() - t0
    return students, [], time.perf_counter() - t0, {"chain_seconds": upto}


def distill_fan_out(ctx: Context, row: dict, seed: int, long: float) -> tuple[object, list, float, dict]:
    """Multi-student distillation (distill.method msd; components/methods/msd.py) for one training seed: the K
    branches one after another on this machine, each its stages in order -> (the routed student, [], the fan-out's
    seconds on one machine, {fan_out_seconds_longest_branch: the parallel wall-clock the Kubeflow DAG implies}).
    --long does not apply."""
    from components.methods import build_method, distill, parse_distill_config
    from components.methods.msd import branches, route

    cfg = parse_distill_config({**row_distill(ctx.cfg, row), "seed": seed, "checkpoint_every": 0, "resume": "never",
                                "fid_every": 0})
    students, per_branch = [], []
    for stages in branches(cfg):
        student, t0 = None, time.perf_counter()
        for _, config in stages:
            method = build_method(ctx.teacher, config, ctx.data, ctx.pairs, init=student)
            distill(method, progress=True)
            student = method.student()
        students.append(student)
        per_branch.append(time.perf_counter() - t0)
    return route(students, cfg, ctx.data), [], sum(per_branch), {"fan_out_seconds_longest_branch": max(per_branch)}


def distill_cascade(ctx: Context, row: dict, seed: int, long: float) -> tuple[object, list, float, dict]:
    """A LowDiff row with distill.cascade_dmd2 (components/methods/cascade_dmd2.py) for one training seed: the
    cascade that the LowDiff row of the same overrides (less cascade_dmd2) trains for this seed - its saved student
    when that row has run, else trained here and saved for it - then DMD2 on it -> (the distilled cascade, [],
    seconds of the DMD2 step, {cascade_seconds: of the cascade's training, when it ran here}). --long does not
    apply."""
    from components.methods import build_method, distill, distill_stages, parse_distill_config

    cfg = parse_distill_config({**row_distill(ctx.cfg, row), "seed": seed, "checkpoint_every": 0, "resume": "never",
                                "fid_every": 0})
    (_, training), (_, dmd2) = distill_stages(cfg)
    folder = entry_path(ctx, {k: v for k, v in row["distill"].items() if k != "cascade_dmd2"}, seed).with_suffix("")
    extra = {}
    if (folder / "cascade.json").is_file():
        print(f"{ctx.name}: {row['name']}, training seed {seed}: the cached cascade ({folder.name})", file=sys.stderr)
        cascade = load_trained(folder)
    else:
        t0 = time.perf_counter()
        method = build_method(ctx.teacher, training, ctx.data)
        distill(method, progress=True)
        cascade, extra["cascade_seconds"] = method.student(), time.perf_counter() - t0
        save_trained(cascade, folder)
    t0 = time.perf_counter()
    method = build_method(cascade, dmd2, ctx.data)
    distill(method, progress=True)
    return method.student(), [], time.perf_counter() - t0, extra


def cascade_figures(ctx: Context, model, distill_cfg: dict) -> dict:
    """A LowDiff cascade's (or its one-level baseline's) own figures: NFE per level and in full-resolution
    equivalents, the training budget in full-resolution-equivalent images, and images/s at batch 256 (one warm-up
    batch, then 4 timed)."""
    from components.diffusion.cascade import full_resolution_nfe, level_nfe
    from components.diffusion.generate import generate
    from components.methods.lowdiff import full_resolution_fraction

    recipe = model.sampling
    res = [lv["resolution"] for lv in recipe["levels"]]
    fraction = full_resolution_fraction(res, distill_cfg.get("level_weights"))
    generate(model, ctx.labels[:256], 0, batch_size=256)
    timed = generate(model, ctx.labels[:1024], 1, batch_size=256)
    out = {"levels": recipe["levels"], "level_nfe": level_nfe(recipe), "fre_nfe": full_resolution_nfe(recipe),
           "train_fre_images": fraction * int(distill_cfg["iterations"]) * int(distill_cfg["batch_size"]),
           "throughput_b256": len(timed.labels) / timed.seconds}
    if distill_cfg.get("cascade_dmd2") is not None:      # DMD2 on the cascade: its images too (the same level split)
        from components.config import parse_section
        from components.methods.cascade_dmd2 import cascade_stage
        from components.methods.lowdiff import LowDiffConfig

        dmd2 = cascade_stage(parse_section(LowDiffConfig, distill_cfg, "distill"))
        out["dmd2_fre_images"] = (full_resolution_fraction(res, dmd2.get("level_weights")) * int(dmd2["iterations"])
                                  * int(dmd2["batch_size"]))
    return out


def save_trained(student, folder: Path) -> None:
    """A sweep's trained student (a guided chain: {steps: student}, one subfolder each) into `folder`, replaced."""
    import shutil

    from components.diffusion import save_denoiser

    shutil.rmtree(folder, ignore_errors=True)
    if isinstance(student, dict):
        for steps, s in student.items():
            save_denoiser(s, folder / str(steps))
    else:
        save_denoiser(student, folder)


def load_trained(folder: Path):
    """What save_trained wrote: a student, or {steps: student} of a guided chain."""
    from components.diffusion import load_denoiser

    if (folder / "unet").is_dir():
        return load_denoiser(folder, what="cached student")
    return {int(p.name): load_denoiser(p, what="cached student") for p in folder.iterdir() if p.name.isdigit()}


OPERATIONAL = ("device", "log_every", "checkpoint_every", "checkpoint_dir", "resume")  # how, not what: not compared


def sampled(student, row: dict):
    """(the model to score, its CFG scale) for the row's `sampling`: a CTM sweep row's gamma-sampling at its steps,
    a guided chain's stage student at guidance w (scale 1 + w), else the student as trained."""
    if "sampling" not in row:
        return student, 1.0
    if "w" in row["sampling"]:                       # a guided chain: {steps: student of that stage}
        return student[int(row["sampling"]["steps"])], 1.0 + float(row["sampling"]["w"])
    if not hasattr(student, "with_sampling"):
        raise SpecError(f"leaderboard row {row['name']!r}: a sweep needs a student with step x gamma sampling "
                        f"(distill.method ctm), got a {type(student).__name__}")
    return student.with_sampling(int(row["sampling"]["steps"]), float(row["sampling"]["gamma"])), 1.0


def _adopt_named_entry(path: Path, named_key: str) -> None:
    """Entries written before the key was the row's overrides were keyed by the row's name: move such an
    entry (and its saved student) to its new key, so the seeds it holds are not distilled again."""
    old = path.with_name(f"{named_key}.json")
    if path.is_file() or not old.is_file():
        return
    if old.with_suffix("").is_dir():
        old.with_suffix("").rename(path.with_suffix(""))
    old.rename(path)


def _shared(ctx: Context) -> tuple:
    return ctx.paths["dataset"].name, ctx.paths["feature_net"].name, ctx.paths["teacher"].name, ctx.protocol()


def entry_path(ctx: Context, overrides: dict, seed: int) -> Path:
    """The cache entry of one training seed of a row with these distill overrides (its saved student, if any: the
    path less .json) - keyed by what the row changes, not by its name: a renamed row keeps its students."""
    return ctx.paths["teacher"].parent / "students" / f"{_key(*_shared(ctx), overrides, seed)}.json"


def seed_result(ctx: Context, row: dict, seed: int, long: float, fresh: bool) -> tuple[dict, list]:
    """One training seed of a row -> (its figures, its checkpoint curve up to long x iterations or further),
    from the cache when a run of the same distill overrides (the row's name is not part of the key), seed,
    data, teacher, feature net and protocol went at least as far (its whole curve is returned).
    The entry keeps the resolved distill config it ran: a value that differs now (a changed default
    included) is a miss; a field added since, at its default, is not. The code is not part of the key:
    after changing a method's code, rerun with --fresh (each entry names the commit it ran at).
    Rows of one sweep (`train_as`) share the training: the entry saves the student, and each row's figures
    are added to it (`results`) as that row is first scored."""
    from components.atomic import write_json

    distill_cfg = {k: v for k, v in row_distill(ctx.cfg, row).items() if k not in OPERATIONAL}
    distill_cfg["seed"] = seed
    path = entry_path(ctx, row.get("distill") or {}, seed)
    folder = path.with_suffix("")                       # the saved student of a sweep's training (or a LowDiff row's)
    _adopt_named_entry(path, _key(*_shared(ctx), row.get("train_as", row["name"]), seed))
    end = int(round(int(distill_cfg["iterations"]) * long))
    if path.is_file() and (not fresh or path in ctx.trained):
        entry = json.loads(path.read_text())
        same = all(entry["distill"][k] == v for k, v in distill_cfg.items() if k in entry["distill"])
        if same and (entry["end"] >= end or entry.get("chain")):      # a chain has no --long curve
            results = entry.get("results", {})
            if "train_as" not in row or row["name"] in results:
                print(f"{ctx.name}: {row['name']}, training seed {seed}: cached ({path.name})", file=sys.stderr)
                return results.get(row["name"], entry["result"]), [tuple(c) for c in entry["curve"]]
            if folder.is_dir():                          # this sweep's student, scored for this row now
                print(f"{ctx.name}: {row['name']}, training seed {seed}: cached student ({folder.name})",
                      file=sys.stderr)
                model, scale = sampled(load_trained(folder), row)
                # "commit": where the student was trained (its entry's); "scored_at": where this row was scored
                results[row["name"]] = {**entry["result"], **ctx.evaluate(model, row["name"], scale),
                                        "scored_at": ctx.commit}
                write_json(path, {**entry, "results": results})
                return results[row["name"]], [tuple(c) for c in entry["curve"]]
    print(f"{ctx.name}: {row['name']}, training seed {seed}", file=sys.stderr)
    chain = distill_cfg.get("method") == "guided" and distill_cfg.get("target_steps") is not None
    fan_out, extra = distill_cfg.get("method") == "msd", {}
    lowdiff = distill_cfg.get("method") == "lowdiff"
    distilled = lowdiff and distill_cfg.get("cascade_dmd2") is not None        # DMD2 on the row's cascade
    if fan_out or chain or distilled:
        run = distill_fan_out if fan_out else distill_chain if chain else distill_cascade
        student, curve, seconds, extra = run(ctx, row, seed, long)
    else:
        student, curve, seconds = distill_one(ctx, row, seed, long)
    model, scale = sampled(student, row)
    if lowdiff:
        extra = {**extra, **cascade_figures(ctx, model, distill_cfg)}
        if not distilled:
            save_trained(student, folder)                # the cascade a row with cascade_dmd2 distils
    result = {"seed": seed, "distill_seconds": seconds, **extra, **ctx.evaluate(model, row["name"], scale),
              "commit": ctx.commit}
    entry = {"distill": distill_cfg, "end": end, "curve": curve, "result": result,
             **({"chain": True} if chain or fan_out or distilled else {})}     # no --long curve
    if "train_as" in row:
        save_trained(student, folder)
        entry["results"] = {row["name"]: result}
    write_json(path, entry)
    ctx.trained.add(path)
    return result, curve


def student_row(ctx: Context, row: dict, seeds: list[int], long: float, teacher: dict, fresh: bool = False) -> dict:
    per_seed, curves = [], []
    for seed in seeds:
        result, curve = seed_result(ctx, row, seed, long, fresh)
        per_seed.append(result)
        curves.append(curve)
    fids = [r["fid"] for r in per_seed]
    mean = lambda k: statistics.fmean(r[k] for r in per_seed)          # noqa: E731
    iterations = sorted({it for c in curves for it, _ in c})
    # a point past where every seed's run ended (one seed cached from a longer run) names its seed count
    curve = [{"iteration": it, "fid": statistics.fmean(v), "fid_std": statistics.pstdev(v), "seeds": len(v)}
             for it in iterations for v in [[f for c in curves for i, f in c if i == it]]]
    t_excess = teacher["excess_fid"]
    excess = statistics.fmean(fids) - ctx.floor["fid"]
    from components.metrics.summary import excess_fid_ratio

    sweep = {k: row[k] for k in ("train_as", "sampling", "sweep_only") if k in row}   # a sweep row: training, recipe
    return {"name": row["name"], "kind": "student", "distill": row.get("distill") or {}, "train_seeds": seeds, **sweep,
            "fid": statistics.fmean(fids), "fid_std_train": statistics.pstdev(fids),
            "fid_std_sample": mean("fid_std_sample"),
            "excess_fid": excess, "excess_fid_ratio": excess_fid_ratio(excess, t_excess),
            "class_acc": mean("class_acc"), "nfe": per_seed[0]["nfe"], "latency_p50_ms": mean("latency_p50_ms"),
            "throughput": mean("throughput"), "parameters": per_seed[0]["parameters"],
            "distill_seconds": mean("distill_seconds"), "iterations": int(ctx.cfg.distill.iterations),
            **({k: per_seed[0][k] for k in ("levels", "level_nfe", "fre_nfe", "train_fre_images", "dmd2_fre_images")
                if k in per_seed[0]} if "fre_nfe" in per_seed[0] else {}),
            **({"throughput_b256": mean("throughput_b256"), "fid_per_train_seed": fids} if "fre_nfe" in per_seed[0]
               else {}),
            **({"compare_to": row["compare_to"]} if "compare_to" in row else {}),
            **({"chain_seconds": {k: statistics.fmean(r["chain_seconds"][k] for r in per_seed)
                                  for k in per_seed[0]["chain_seconds"]}}
               if all("chain_seconds" in r for r in per_seed) else {}),
            **({"fan_out_seconds_longest_branch": mean("fan_out_seconds_longest_branch"),
                "parameters_total": per_seed[0]["parameters_total"]} if "fan_out_seconds_longest_branch" in per_seed[0]
               else {}),
            "long": max([long] + [c["iteration"] / int(ctx.cfg.distill.iterations) for c in curve]),
            "curve": curve, "per_seed": per_seed}


def run_dataset(name: str, spec: dict, args, prov: dict) -> dict:
    from components.training import pin_threads

    config = spec["datasets"][name]["config"]
    cfg = run_config(config)
    pin_threads(cfg.compute.threads)
    from components.methods import parse_distill_config

    rows_cfg = {}
    spec = {**spec, "rows": [for_dataset(r, name) for r in spec["rows"]
                             if name in r.get("datasets", [name])]}                # rows for this dataset
    for row in spec["rows"]:
        try:
            rows_cfg[row["name"]] = parse_distill_config(row_distill(cfg, row))
        except ValueError as exc:
            raise SpecError(f"leaderboard row {row['name']!r}: {exc}") from None
    need_pairs = any(c.regression_weight > 0 or c.warm_start_iterations > 0 for c in rows_cfg.values()
                     if hasattr(c, "regression_weight"))
    paths = shared_artifacts(cfg, Path(args.cache), need_pairs)
    ctx = Context(name, config, cfg, paths, spec["sample_seeds"])
    teacher = teacher_rows(ctx)
    ws = sorted({r["sampling"]["w"] for r in spec["rows"] if "w" in r.get("sampling", {})})
    default = next(t for t in teacher if t["default"])
    ctx.commit = prov["commit"]
    rows = []
    for row in spec["rows"]:
        rows.append(student_row(ctx, row, spec["train_seeds"], args.long, default, args.fresh))
        rows[-1]["measured"] = {"commit": prov["commit"], "finished_utc": utc_now()}
    # after the students: a long run stopped halfway has cached the trained chains first (CFG teacher: 2 x NFE)
    guidance = teacher_guidance_rows(ctx, ws, default) if ws else None
    return {"dataset": name, "config": config, "protocol": ctx.protocol(), "train_seeds": spec["train_seeds"],
            "teacher": teacher, **({"teacher_guidance": guidance} if guidance else {}), "rows": rows,
            "provenance": {**prov, "finished_utc": utc_now()}}


# ----------------------------------------------------------------------------------------------
# outputs

def table(result: dict) -> str:
    """The markdown table of one dataset: teacher rows, then students."""
    p = result["protocol"]
    head = ("| model | NFE | FID | train seeds | std (train seeds) | std (sample seeds) | excess FID | "
            "excess / teacher's | class acc | p50 ms (batch 1) | images/s | parameters | distill s |")
    lines = [head, "|" + "---|" * 13]
    t_default = next(t for t in result["teacher"] if t["default"])
    for t in result["teacher"]:
        ratio = t["excess_fid"] / t_default["excess_fid"] if t_default["excess_fid"] > 0 else float("nan")
        lines.append(f"| {t['name']} | {t['nfe']} | {t['fid']:.2f} | - | - | {t['fid_std_sample']:.2f} | "
                     f"{t['excess_fid']:.2f} | {ratio:.2f} | {t['class_acc']:.3f} | {t['latency_p50_ms']:.1f} | "
                     f"{t['throughput']:.0f} | {t['parameters']:,} | - |")
    for r in result["rows"]:
        if r.get("sweep_only"):                      # a guided chain's rows at other w: the guidance table
            continue
        lines.append(f"| {r['name']} | {r['nfe']} | {r['fid']:.2f} | {len(r['train_seeds'])} | "
                     f"{r['fid_std_train']:.2f} | {r['fid_std_sample']:.2f} | {r['excess_fid']:.2f} | "
                     f"{r['excess_fid_ratio']:.2f} | "
                     f"{r['class_acc']:.3f} | {r['latency_p50_ms']:.1f} | {r['throughput']:.0f} | "
                     f"{r['parameters']:,} | {r['distill_seconds']:.0f} |")
    lines.append("")
    lines.append(f"FID: feature net {p['feature_net']}, {p['num_samples']} class-balanced samples per model and "
                 f"sampling seed {p['sample_seeds']}, reference {p['reference']}; students over the training seeds "
                 f"of their row. Real floor {p['real_floor_fid']:.2f} ({p['real_floor']}); real eval "
                 f"images' class accuracy {p['real_eval_class_acc']:.3f}.")
    return "\n".join(lines)


def pictures(result: dict, folder: Path) -> None:
    """Draw result["pictures"] (kind -> file name in `folder`): FID vs NFE (teacher curve, students as points,
    error bars = std over training seeds) and FID during distillation (checkpoint FIDs, mean and std over
    training seeds)."""
    from components.viz import fid_over_training, fid_vs_nfe

    dataset = result["dataset"]
    points = [{"model": "teacher", "nfe": t["nfe"], "fid": t["fid"]} for t in result["teacher"]]
    for r in result["rows"]:          # a sweep's rows: one line per gamma (its 1-step row on each)
        if "w" in r.get("sampling", {}):             # a guided chain: its rows at the first w, one line
            if not r.get("sweep_only"):
                points.append({"model": f"{r['train_as']} (w {r['sampling']['w']:g})", "nfe": r["nfe"],
                               "fid": r["fid"], "fid_std": r["fid_std_train"]})
            continue
        if "sampling" not in r:
            points.append({"model": r["name"], "nfe": r["nfe"], "fid": r["fid"], "fid_std": r["fid_std_train"]})
            continue
        gammas = sorted({q["sampling"]["gamma"] for q in result["rows"] if q.get("train_as") == r["train_as"]
                         and q["sampling"]["steps"] > 1}) if r["sampling"]["steps"] == 1 else [r["sampling"]["gamma"]]
        points += [{"model": f"{r['train_as']} gamma {g:g}", "nfe": r["nfe"], "fid": r["fid"],
                    "fid_std": r["fid_std_train"]} for g in gammas or [0.0]]
    t_default = next(t for t in result["teacher"] if t["default"])
    files = result["pictures"]
    fid_vs_nfe(points, f"{dataset}: FID vs NFE").save(folder / files["fid_vs_nfe"])
    curves = {}
    drawn = set()
    for r in result["rows"]:              # one series per seed count: a tail from fewer seeds is labelled so
        if "train_as" in r:               # a sweep's rows share one training and one curve (its default recipe)
            if r["train_as"] in drawn:
                continue
            drawn.add(r["train_as"])
        name = f"{r['train_as']} (training)" if "train_as" in r else r["name"]
        for c in r["curve"]:
            n = c.get("seeds", len(r["train_seeds"]))
            label = name if n == len(r["train_seeds"]) else f"{name} ({n} of {len(r['train_seeds'])} seeds)"
            curves.setdefault(label, []).append((c["iteration"], c["fid"], c["fid_std"]))
    fid_over_training(curves, t_default["fid"], result["protocol"]["real_floor_fid"],
                      f"{dataset}: FID during distillation").save(folder / files["convergence"])
    if files.get("fid_vs_w"):
        from components.viz import fid_vs_w

        pts = [{"model": "teacher (CFG)", "w": t["w"], "fid": t["fid"], "class_acc": t["class_acc"]}
               for t in result.get("teacher_guidance", [])]
        pts += [{"model": f"{r['train_as']} {r['sampling']['steps']}-step", "w": r["sampling"]["w"], "fid": r["fid"],
                 "class_acc": r["class_acc"]} for r in result["rows"] if "w" in r.get("sampling", {})]
        fid_vs_w(pts, f"{dataset}: FID and class accuracy vs guidance w").save(folder / files["fid_vs_w"])


def page(results: list[dict], folder: Path, page_path: Path) -> str:
    """docs/results.md from the saved results: per dataset, who measured it, the table, the pictures."""
    import os

    lines = ["# Benchmark results", "",
             "Generated by `benchmarks/leaderboard.py` from the JSON files in "
             f"`{os.path.relpath(folder, page_path.parent)}/`: do not edit by hand. Rerun with `--write-docs`, or "
             "re-render with `--from-json` (see [benchmark.md](benchmark.md); the protocol is in "
             "[evaluation.md](evaluation.md)).", ""]
    for r in results:
        prov = r["provenance"]
        sha, dirty = prov["commit"].partition(" ")[::2]
        rel = os.path.relpath(folder, page_path.parent)
        lines += [f"## {r['dataset']} ({r['config']})", "",
                  f"Measured {prov['started_utc']} to {prov['finished_utc']} on {prov['machine']}, at commit "
                  f"`{sha}`{' ' + dirty if dirty else ''}. Command: "
                  f"`{shlex.join(['python', 'benchmarks/leaderboard.py', *prov['argv']])}`.", "",
                  *earlier_rows(r),
                  table(r), "",
                  *sweep_tables(r),
                  *guidance_tables(r),
                  *fan_out_tables(r),
                  *cascade_tables(r),
                  *([f"![FID and class accuracy vs w]({rel}/{r['pictures']['fid_vs_w']})"]
                    if r["pictures"].get("fid_vs_w") else []),
                  f"![FID vs NFE]({rel}/{r['pictures']['fid_vs_nfe']})",
                  f"![FID during distillation]({rel}/{r['pictures']['convergence']})", ""]
    return "\n".join(lines)


def sweep_tables(result: dict) -> list[str]:
    """Per sweep (a CTM student scored at several step counts and gammas): FID mean +- std over the training
    seeds, steps down, gamma across (1 step is one jump to 0: the same for every gamma)."""
    out = []
    for name in dict.fromkeys(r["train_as"] for r in result["rows"] if "gamma" in r.get("sampling", {})):
        rows = [r for r in result["rows"] if r.get("train_as") == name]
        gammas = sorted({r["sampling"]["gamma"] for r in rows if r["sampling"]["steps"] > 1}) or [0.0]
        cell = {(r["sampling"]["steps"], r["sampling"]["gamma"]): r for r in rows}
        lines = [f"{name}: FID by step count and gamma (one network per training seed; mean +- std over "
                 f"{len(rows[0]['train_seeds'])} training seeds; the teacher: "
                 f"{next(t for t in result['teacher'] if t['default'])['fid']:.2f})", "",
                 "| steps (NFE) | " + " | ".join(f"gamma {g:g}" for g in gammas) + " |",
                 "|---|" + "---|" * len(gammas)]
        for n in sorted({r["sampling"]["steps"] for r in rows}):
            vals = []
            for g in gammas:
                r = cell.get((n, g)) or (cell.get((n, rows[0]["sampling"]["gamma"])) if n == 1 else None)
                vals.append(f"{r['fid']:.2f} +- {r['fid_std_train']:.2f}" if r else "-")
            lines.append(f"| {n} | " + " | ".join(vals) + " |")
        out += lines + [""]
    return out


def fan_out_tables(result: dict) -> list[str]:
    """Multi-student rows (distill.method msd): the fan-out's wall-clock on this machine (the K branches in turn) and
    the longest branch (what the Kubeflow DAG, one GPU task per branch, implies), per-student and bundle parameters."""
    rows = [r for r in result["rows"] if "fan_out_seconds_longest_branch" in r]
    if not rows:
        return []
    lines = ["Multi-student rows: distillation wall-clock of the fan-out (mean over the training seeds) and "
             "parameters; `parameters` in the table above is one student's (what runs for an image).", "",
             "| row | students | fan-out s, one machine | longest branch s (parallel DAG) | parameters per student | "
             "parameters in the bundle |", "|---|---|---|---|---|---|"]
    for r in rows:
        k = r["distill"].get("students", "?")
        lines.append(f"| {r['name']} | {k} | {r['distill_seconds']:.0f} | {r['fan_out_seconds_longest_branch']:.0f} | "
                     f"{r['parameters']:,} | {r['parameters_total']:,} |")
    return lines + [""]


def cascade_tables(result: dict) -> list[str]:
    """LowDiff rows (distill.method lowdiff): levels and NFE per level, NFE and training budget in full-resolution
    equivalents, FID, images/s at batch 256 and p50 latency at batch 1; a row with `compare_to` also as ratios to
    that row (throughput x, p50 x, FID x) - the issue's targets are >= 1.5 x, <= 1/1.5 x, <= 1.05 x."""
    rows = [r for r in result["rows"] if "fre_nfe" in r]
    if not rows:
        return []
    by_name = {r["name"]: r for r in rows}
    lines = ["LowDiff rows: one network per training seed; NFE per level (Heun, 2 steps - 1) at its resolution; "
             "`full-res NFE` weighs each level by its share of the full resolution's pixels; the training budget is "
             "in full-resolution-equivalent images (iterations x batch x that share; a distilled cascade: its "
             "cascade's training + the DMD2 step's).", "",
             "| row | levels (resolution: NFE, start sigma) | full-res NFE | training budget (images) | FID | "
             "images/s (batch 256) | p50 ms (batch 1) | vs | throughput x | p50 x | FID x |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        levels = ", ".join(f"{lv['resolution']}: {n} ({lv['sigma_start']:g})"
                           for lv, n in zip(r["levels"], r["level_nfe"]))
        base = by_name.get(r.get("compare_to", ""))
        ratios = (f"{base['name']} | {r['throughput_b256'] / base['throughput_b256']:.2f} | "
                  f"{r['latency_p50_ms'] / base['latency_p50_ms']:.2f} | {r['fid'] / base['fid']:.3f}"
                  if base else "- | - | - | -")
        budget = f"{r['train_fre_images']:,.0f}" + (f" + {r['dmd2_fre_images']:,.0f} (DMD2)"
                                                     if "dmd2_fre_images" in r else "")
        lines.append(f"| {r['name']} | {levels} | {r['fre_nfe']:.2f} | {budget} | "
                     f"{r['fid']:.2f} +- {r['fid_std_train']:.2f} | {r['throughput_b256']:.0f} | "
                     f"{r['latency_p50_ms']:.1f} | {ratios} |")
    return lines + [""]


def chain_budget(result: dict, row: dict) -> str:
    """The chain's seconds up to each stage (mean over the training seeds) and, where the same dataset's result
    has a `DMD2 1-step` row, the seconds to 4 steps over DMD2's (issue 17's budget: stage 1 + halvings to 4
    steps within 2x DMD2's distillation)."""
    upto = row.get("chain_seconds")
    if not upto:
        return ""
    text = "; up to each stage: " + ", ".join(f"{n} steps {upto[n]:.0f} s" for n in sorted(upto, key=int, reverse=True))
    dmd2 = next((r for r in result["rows"] if r["name"] == "DMD2 1-step"), None)
    if dmd2 is not None and "4" in upto:
        # wall-clock on a shared machine drifts between sessions: name the commits both were trained at, so a
        # reader sees whether the two come from one run
        text += (f"; to 4 steps = {upto['4'] / dmd2['distill_seconds']:.2f} x DMD2 1-step's "
                 f"{dmd2['distill_seconds']:.0f} s (DMD2 1-step trained at {_trained_at(dmd2)}, this chain at "
                 f"{_trained_at(row)})")
    return text


def _trained_at(row: dict) -> str:
    """The commit(s) a row's training seeds ran at (short hashes)."""
    return ", ".join(sorted({str(s.get("commit", "?"))[:7] for s in row.get("per_seed", [])})) or "?"


def guidance_tables(result: dict) -> list[str]:
    """Per guided chain: FID mean +- std over the training seeds (class accuracy) of each stage's student at each
    w, the CFG teacher at the same w above them, and each student's FID / the teacher's at that w."""
    out = []
    teacher = {t["w"]: t for t in result.get("teacher_guidance", [])}
    for name in dict.fromkeys(r["train_as"] for r in result["rows"] if "w" in r.get("sampling", {})):
        rows = [r for r in result["rows"] if r.get("train_as") == name]
        ws = sorted({r["sampling"]["w"] for r in rows})
        cell = {(r["sampling"]["steps"], r["sampling"]["w"]): r for r in rows}
        lines = [f"{name}: FID (class accuracy) by stage and guidance w - one chain per training seed, mean +- std "
                 f"over {len(rows[0]['train_seeds'])} training seeds; ratio: the student's FID / the CFG teacher's "
                 f"at the same w. Whole chain: {rows[0]['distill_seconds']:.0f} s of distillation per seed"
                 + chain_budget(result, rows[0]) + ".", "",
                 "| model (NFE at w > 0) | " + " | ".join(f"w {w:g}" for w in ws) + " |", "|---|" + "---|" * len(ws)]
        if teacher:
            nfe = max((teacher[w]["nfe"] for w in ws if w in teacher), default="?")
            lines.append(f"| teacher, CFG ({nfe}) | " + " | ".join(
                f"{teacher[w]['fid']:.2f} ({teacher[w]['class_acc']:.3f})" if w in teacher else "-" for w in ws) + " |")
        for n in sorted({r["sampling"]["steps"] for r in rows}, reverse=True):
            lines.append(f"| {n}-step student ({n}) | " + " | ".join(
                f"{c['fid']:.2f} +- {c['fid_std_train']:.2f} ({c['class_acc']:.3f})"
                + (f", ratio {c['fid'] / teacher[w]['fid']:.2f}" if w in teacher else "")
                if (c := cell.get((n, w))) else "-" for w in ws) + " |")
        out += lines + [""]
    return out


def earlier_rows(result: dict) -> list[str]:
    """Page lines naming the rows kept from earlier runs (merged by --write-docs), with their commit and date."""
    own = result["provenance"]["commit"]
    kept = [f"{r['name']} (`{r['measured']['commit'].partition(' ')[0]}`, {r['measured']['finished_utc']})"
            for r in result["rows"] if r.get("measured", {}).get("commit", own) != own]
    lines = [f"Rows kept from earlier runs of this dataset (same data, teacher and protocol; trained with the "
             f"defaults of their commit): {'; '.join(kept)}.", ""] if kept else []
    sha = result["protocol"]["teacher_sha256"]
    other = {}
    for r in result["rows"]:
        m = r.get("measured", {})
        if m.get("teacher_sha256") not in (None, sha):
            other.setdefault((m["teacher_sha256"], m["teacher_fid"]), []).append(r["name"])
    for (old_sha, fid), names in other.items():
        lines += [f"Measured on the same teacher recipe trained on another machine, whose weights differ from this "
                  f"table's teacher by float rounding (sha256 `{old_sha[:12]}` vs `{sha[:12]}`; FID at its default "
                  f"sampler {fid:.2f} vs {next(t['fid'] for t in result['teacher'] if t['default']):.2f}): "
                  f"{'; '.join(names)}.", ""]
    return lines


COMPARABLE = ("feature_net", "num_samples", "sample_seeds", "reference", "real_floor_fid", "teacher_sha256",
              "torch_threads", "image_shape")        # protocol keys that make two runs' rows one table
# The same recipe retrained on another machine (another CPU model: other float rounding in the kernels) gives a
# teacher and feature net that differ in their last bits. Their rows stay one table when the figures that show it
# agree to these relative tolerances; the page names the rows measured on the earlier teacher.
ROUNDING = {"real_floor_fid": 1e-4, "teacher_fid": 1e-3}


def rounding_only(previous: dict, result: dict) -> bool:
    """Whether two runs differ only by float rounding: the same protocol but for the teacher's hash and the real
    floor, the floor and the default teacher's FID within ROUNDING."""
    p, r = previous.get("protocol", {}), result["protocol"]
    if any(p.get(k) != r.get(k) for k in COMPARABLE if k not in ("teacher_sha256", "real_floor_fid")):
        return False
    t_old = next((t["fid"] for t in previous.get("teacher", []) if t.get("default")), None)
    t_new = next((t["fid"] for t in result.get("teacher", []) if t.get("default")), None)
    close = lambda a, b, tol: a is not None and b is not None and abs(a - b) <= tol * abs(b)   # noqa: E731
    return close(p.get("real_floor_fid"), r["real_floor_fid"], ROUNDING["real_floor_fid"]) and \
        close(t_old, t_new, ROUNDING["teacher_fid"])


def merge_previous(result: dict, previous: dict | None, order: list[str]) -> dict:
    """The rows of `result` plus those of the dataset's previous JSON that this run did not measure, when both
    share the protocol (data, teacher, feature net, reference, samples, seeds) - or differ only by float rounding
    (`rounding_only`: the kept rows then name the teacher they were measured on); in the spec's order."""
    if not previous:
        return result
    same = all(previous.get("protocol", {}).get(k) == result["protocol"].get(k) for k in COMPARABLE)
    if not same and not rounding_only(previous, result):
        print(f"{result['dataset']}: the previous results use another protocol or teacher: not merged",
              file=sys.stderr)
        return result
    have = {r["name"] for r in result["rows"]}
    old = previous["provenance"]
    retrained = {} if same else {"teacher_sha256": previous["protocol"]["teacher_sha256"],
                                 "teacher_fid": next(t["fid"] for t in previous["teacher"] if t.get("default"))}
    kept = [{**r, "measured": r.get("measured") or {"commit": old["commit"], "finished_utc": old["finished_utc"]}}
            for r in previous["rows"] if r["name"] not in have and r["name"] in order]
    kept = [{**r, "measured": {**r["measured"], **retrained}} if retrained and "teacher_sha256" not in r["measured"]
            else r for r in kept]
    rows = sorted(result["rows"] + kept, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    guidance = result.get("teacher_guidance") or (previous.get("teacher_guidance") if any(
        "w" in r.get("sampling", {}) for r in kept) else None)          # the reference of kept guided rows
    return {**result, "rows": rows, **({"teacher_guidance": guidance} if guidance else {})}


def write_docs(results: list[dict], folder: Path, page_path: Path, order: list[str] | None = None) -> None:
    """<folder>/<dataset>.json (merged with the rows of the previous one this run did not measure) and the
    pictures, then the page from every <dataset>.json there."""
    from components.atomic import write_json

    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results):
        name = r["dataset"]
        path = folder / f"{name}.json"
        r = results[i] = merge_previous(r, json.loads(path.read_text()) if path.is_file() else None,
                                        order or [row["name"] for row in r["rows"]])
        r["pictures"] = {"fid_vs_nfe": f"{name}-fid-vs-nfe.png", "convergence": f"{name}-convergence.png",
                         **({"fid_vs_w": f"{name}-fid-vs-w.png"} if r.get("teacher_guidance") else {})}
        write_json(folder / f"{r['dataset']}.json", r)
    render(folder, page_path)


def render(folder: Path, page_path: Path) -> None:
    from components.atomic import write_text

    files = sorted(folder.glob("*.json"))
    if not files:
        raise SpecError(f"--from-json: no <dataset>.json in '{folder}': run the leaderboard with --write-docs first")
    results = []
    for f in files:
        try:
            results.append(json.loads(f.read_text()))
        except ValueError as exc:
            raise SpecError(f"'{f}': not a leaderboard result ({exc})") from None
        if not all(k in results[-1] for k in ("dataset", "rows", "teacher", "provenance", "pictures")):
            raise SpecError(f"'{f}': not a leaderboard result (needs dataset, rows, teacher, provenance, pictures)")
    for r in results:                          # the pictures are drawn from the JSON too: they always agree
        pictures(r, folder)
    text = page(results, folder, page_path)
    t2i = folder / "t2i" / "t2i.json"            # benchmarks/t2i.py's text-to-image table, when it has run
    if t2i.is_file():
        import os

        from benchmarks.t2i import section

        text += "\n" + "\n".join(section(json.loads(t2i.read_text()), os.path.relpath(t2i.parent, page_path.parent)))
    write_text(page_path, text)
    print(f"wrote {page_path}", file=sys.stderr)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    folder = Path(args.results)
    page_path = Path(args.write_docs or ROOT / PAGE)
    if args.from_json:
        render(folder, page_path)
        return []
    spec = load_spec(args.spec, args.dataset, args.rows, args.train_seeds)
    order = [r["name"] for r in load_spec(args.spec, None, None, None)["rows"]]      # the page's row order
    prov = provenance(sys.argv[1:] if argv is None else list(argv))
    results = []
    for name in spec["datasets"]:
        result = run_dataset(name, spec, args, prov)
        print("\n" + table(result) + "\n")
        results.append(result)
        if args.write_docs:
            write_docs([result], folder, page_path, order)
            result = results[-1] = json.loads((folder / f"{name}.json").read_text())
    if args.out:
        from components.atomic import write_json

        write_json(args.out, results[-1])
    print(json.dumps(results[-1] if len(results) == 1 else results))
    return results


if __name__ == "__main__":
    main()
