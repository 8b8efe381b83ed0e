"""The DVC stages of dvc.yaml: the same components and the same params.yaml as dmd2_pipeline.

    python -m components.stages data      --params params.yaml --out artifacts/dataset
    python -m components.stages features  --params params.yaml --dataset artifacts/dataset --out artifacts/feature_net
    python -m components.stages teacher   --params params.yaml --dataset artifacts/dataset --out artifacts/teacher
    python -m components.stages pairs     --params params.yaml --teacher artifacts/teacher --out artifacts/pairs
    python -m components.stages distill   --params params.yaml --dataset ... --teacher ... --features ...
                                          --pairs artifacts/pairs --checkpoints artifacts/checkpoints
                                          --out artifacts/student --plots plots/distill_losses.csv
    python -m components.stages teacher_eval --params params.yaml --dataset ... --features ... --teacher ...
                                          --out artifacts/teacher_eval
    python -m components.stages evaluate  --params params.yaml --dataset ... --features ... --teacher ... --student ...
                                          --teacher-eval artifacts/teacher_eval
                                          --metrics metrics.json --out artifacts/eval --plots plots/fid_vs_nfe.csv
    python -m components.stages export    --params params.yaml --dataset ... --student ... --metrics metrics.json
                                          --eval artifacts/eval --out models/dmd2_student --report artifacts/report/run_report.html

A guided chain (params_guided.yaml: distill.method guided with target_steps) is `distill` for stage 1, then
`distill --halving K --teacher <the previous student>` per halving, then `evaluate --sweep <every student>`.
Multi-student distillation (params_msd.yaml: distill.method msd) is `distill --subset K` per class subset (that
branch's stages in order), then `route --students <the K folders>` (the routed bundle), then evaluate / export.
A LowDiff cascade with distill.cascade_dmd2 (params_lowdiff.yaml) is `distill` (the cascade's training), then
`distill --cascade --teacher <the trained cascade>` (DMD2 on it: one evaluation per level), then evaluate / export.

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
import sys
import time
from pathlib import Path
from typing import Callable

from components.atomic import atomic_dir, atomic_file, write_json, write_text
from components.config import ConfigError
from components.params import RunConfig, load_params, read_distill_file


def write_csv(path: str | Path, rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "iteration", k))
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def stage_data(cfg: RunConfig, a: argparse.Namespace) -> None:
    """Scan -> validate (Great Expectations) -> dataset; the manifest and the report go beside it."""
    from components.data import build_manifest, load_images, save_manifest, validate
    from components.data.validation import DataValidationError

    manifest = build_manifest(cfg.data)
    report = validate(cfg.data, manifest)
    if not report.success:
        raise DataValidationError(report.error_message(cfg.data.path))
    dataset = load_images(cfg.data, manifest)
    with atomic_dir(a.out) as tmp:
        dataset.save(tmp)
        save_manifest(manifest, tmp / "manifest.csv")
        write_json(tmp / "validation.json", report.to_dict())
        (tmp / "validation.html").write_text(report.to_html())
    print(f"dataset: {len(manifest)} images, {int(dataset.is_eval.sum())} eval, shape {dataset.shape} -> {a.out}")


def stage_features(cfg: RunConfig, a: argparse.Namespace) -> None:
    from components.data import ImageDataset
    from components.metrics import train_feature_net

    net, info = train_feature_net(cfg.features, ImageDataset.load(a.dataset))
    with atomic_dir(a.out) as tmp:
        net.save_pretrained(tmp)
    print(f"feature net {net.name}: {info} -> {a.out}")


def stage_teacher(cfg: RunConfig, a: argparse.Namespace) -> None:
    from components.data import ImageDataset
    from components.diffusion import save_denoiser
    from components.teacher import get_teacher
    from components.training import select_device
    from components.viz import windowed

    teacher, losses = get_teacher(cfg.teacher, ImageDataset.load(a.dataset), select_device("auto"))
    with atomic_dir(a.out) as tmp:
        save_denoiser(teacher, tmp)
    write_csv(a.plots, windowed(losses or []))


def stage_pairs(cfg: RunConfig, a: argparse.Namespace) -> None:
    """Teacher pairs shard by shard straight into `out` (each shard atomic; finished ones kept)."""
    from components.diffusion import load_denoiser
    from components.diffusion.pairs import generate_pairs
    from components.teacher import teacher_sampling
    from components.training import select_device

    teacher = load_denoiser(a.teacher, what="teacher")
    teacher.sampling = teacher_sampling(cfg.teacher, teacher)
    pairs = generate_pairs(teacher.to(select_device("auto")), cfg.pairs, a.out)
    print(f"teacher pairs: {len(pairs)} ({pairs.sampler['sampler']}, {len(pairs.sampler['sigmas']) - 1} steps) -> {a.out}")


def _references(cfg: RunConfig, dataset, net):
    from components.metrics.evaluate import extractor_for, reference_features

    return reference_features(extractor_for(cfg.evaluation.extractor(), net), dataset)


def _stage_config(cfg: RunConfig, halving: int, teacher) -> dict:
    """The distill config of this run: the configured method's, or with --halving K > 0 the K-th halving of a
    guided chain (distill.method guided: components/methods/progressive.py), whose teacher must sample in twice
    the steps that halving's student will."""
    from components.methods import distill_stages
    from components.methods.progressive import halvings, stage_one

    if not halving:      # a LowDiff cascade's training without distill.cascade_dmd2 (that is the --cascade stage)
        return stage_one(cfg.distill) if cfg.distill.method == "guided" else distill_stages(cfg.distill)[0][1]
    if cfg.distill.method != "guided":
        raise ConfigError(f"--halving {halving}: distill.method is {cfg.distill.method!r}; halvings belong to a "
                          "guided chain (distill.method guided with distill.target_steps)")
    chain = halvings(cfg.distill)
    if halving > len(chain):
        raise ConfigError(f"--halving {halving}: distill.sampling_steps {cfg.distill.sampling_steps} -> "
                          f"target_steps {cfg.distill.target_steps} has {len(chain)} halving(s); dvc.yaml's "
                          "halve stages must match the chain")
    steps, config = chain[halving - 1]
    got = len(getattr(teacher, "sampling", {}).get("sigmas", [])) - 1
    if got != 2 * steps:
        raise ConfigError(f"--teacher: samples in {got} steps; halving {halving} of the chain expects its teacher "
                          f"at {2 * steps} steps (the previous halving's student)")
    return config


def _branch_configs(cfg: RunConfig, a: argparse.Namespace, teacher) -> list[tuple[str, dict]]:
    """(stage name, distill config) to run in order: the configured method's one ('' name), the --halving K of a
    guided chain, with --cascade DMD2 on a LowDiff cascade (components/methods/cascade_dmd2.py), or with --subset K
    the stages of an MSD fan-out branch (components/methods/msd.py)."""
    if a.cascade:
        from components.methods import distill_stages

        stages = distill_stages(cfg.distill)
        if len(stages) < 2:
            raise ConfigError("--cascade: DMD2 on a LowDiff cascade needs distill.method lowdiff with "
                              f"distill.cascade_dmd2 set (distill.method is {cfg.distill.method!r}"
                              f"{', distill.cascade_dmd2 unset' if cfg.distill.method == 'lowdiff' else ''})")
        return [("", stages[1][1])]
    if cfg.distill.method != "msd":
        if a.subset is not None:
            raise ConfigError(f"--subset {a.subset}: distill.method is {cfg.distill.method!r}; subsets belong to "
                              "multi-student distillation (distill.method msd)")
        return [("", _stage_config(cfg, a.halving, teacher))]
    from components.methods.msd import branches

    if a.subset is None or not 0 <= a.subset < cfg.distill.students:
        raise ConfigError(f"--subset: distill.method msd trains one subset per stage run; give --subset K with K in "
                          f"0..{cfg.distill.students - 1} (dvc.yaml's foreach stage distill_msd does)")
    return branches(cfg.distill)[a.subset]


def stage_route(cfg: RunConfig, a: argparse.Namespace) -> None:
    """MSD's join: the branches' students (--students, comma-separated, in subset order) behind one router."""
    from components.data import ImageDataset
    from components.diffusion import load_denoiser, save_denoiser
    from components.methods.msd import route

    if cfg.distill.method != "msd":
        raise ConfigError(f"stage route: distill.method is {cfg.distill.method!r}; it joins an MSD fan-out "
                          "(distill.method msd)")
    students = [load_denoiser(p, what="--students") for p in a.students.split(",") if p]
    routed = route(students, cfg.distill, ImageDataset.load(a.dataset))
    with atomic_dir(a.out) as tmp:
        save_denoiser(routed, tmp)
    print(f"routed student: {len(students)} students, subsets {routed.subsets} -> {a.out}")


def stage_distill(cfg: RunConfig, a: argparse.Namespace) -> None:
    from components.data import ImageDataset
    from components.diffusion import load_denoiser, save_denoiser, state_hash
    from components.diffusion.pairs import load_pairs
    from components.distributed import init_from_env, shutdown
    from components.methods import build_method, distill
    from components.metrics import FeatureNet
    from components.metrics.evaluate import checkpoint_fid

    world = init_from_env()          # under torchrun / accelerate launch / a PyTorchJob: data-parallel ranks
    try:
        dataset, net = ImageDataset.load(a.dataset), FeatureNet.from_pretrained(a.features)
        teacher = load_denoiser(a.teacher, what="teacher")
        pairs = load_pairs(a.pairs, state_hash(teacher), what=f"--pairs '{a.pairs}'") if a.pairs else None
        Path(a.checkpoints).mkdir(parents=True, exist_ok=True)      # a DVC out even with checkpoints off
        student, history, offset = None, [], 0
        for name, config in _branch_configs(cfg, a, teacher):       # one stage; an MSD branch: its stages in order
            method = build_method(teacher, {**config, "checkpoint_dir": a.checkpoints}, dataset, pairs, student)
            callback = None
            if world.is_main:        # the student's FID at checkpoints: rank 0 only (the ranks hold the same G)
                callback = checkpoint_fid(method, net, _references(cfg, dataset, net), cfg.evaluation.extractor(),
                                          cfg.evaluation.num_samples, batch_size=cfg.evaluation.batch_size)
            t0 = time.perf_counter()
            rows = distill(method, callback=callback)
            history += [{**r, "iteration": offset + r["iteration"], **({"stage": name} if name else {})} for r in rows]
            offset += method.cfg.iterations
            if world.is_main:
                print(f"distillation{f' ({name})' if name else ''}: {time.perf_counter() - t0:.0f} s on "
                      f"{world.size} process(es)")
            student = method.student()
        if world.is_main:
            with atomic_dir(a.out) as tmp:
                save_denoiser(student, tmp)
            write_csv(a.plots, history)
        world.barrier()
    finally:
        shutdown()


def _teacher_protocol(cfg: RunConfig, teacher, net, dataset) -> dict:
    """What the teacher's figures depend on: `evaluate` uses a teacher_eval output only when they match."""
    from components.diffusion import state_hash

    return {"teacher_sha256": state_hash(teacher), "feature_net_sha256": state_hash(net),
            "dataset_sha256": dataset.fingerprint(), "evaluation": cfg.evaluation.model_dump(mode="json"),
            "threads": cfg.compute.threads}


def stage_teacher_eval(cfg: RunConfig, a: argparse.Namespace) -> None:
    """The teacher's figures (its default sampler and evaluation.teacher_nfe_steps, the real floor), its
    sample features and sample grid, and the protocol they were made under: scored once for every
    student chain (`evaluate --teacher-eval`)."""
    from components.data import ImageDataset
    from components.diffusion import load_denoiser
    from components.metrics import FeatureNet, FeatureSet
    from components.metrics.evaluate import evaluate_teacher_model
    from components.viz import sample_grid

    ev = cfg.evaluation
    dataset, net = ImageDataset.load(a.dataset), FeatureNet.from_pretrained(a.features)
    teacher = load_denoiser(a.teacher, what="teacher")
    metrics, feats, gen = evaluate_teacher_model(teacher, dataset, net, _references(cfg, dataset, net), ev)
    with atomic_dir(a.out) as tmp:
        write_json(tmp / "teacher_metrics.json", metrics)
        FeatureSet(feats.features, "teacher-samples", feats.feature_net).save(tmp)
        sample_grid(gen.images, gen.labels, dataset.num_classes, ev.grid_per_class).save(tmp / "teacher_samples.png")
        write_json(tmp / "teacher_protocol.json", _teacher_protocol(cfg, teacher, net, dataset))
    print(f"teacher FID {metrics['fid']:.3f} at {metrics['nfe']} NFE -> {a.out}")


def _saved_teacher_eval(folder: Path, protocol: dict):
    """(metrics, sample features, sample grid PNG bytes) of a teacher_eval output made under `protocol`;
    else a ValueError naming the file and the keys that differ."""
    from components.metrics import FeatureSet

    where = folder / "teacher_protocol.json"
    if not where.is_file():
        raise FileNotFoundError(f"--teacher-eval '{folder}': no teacher_protocol.json (the teacher_eval stage's --out)")
    saved = json.loads(where.read_text())
    differ = sorted(k for k in protocol if saved.get(k) != protocol[k])
    if differ:
        raise ValueError(f"--teacher-eval '{where}': made with another {', '.join(differ)} than this stage's; "
                         "rerun the teacher_eval stage")
    return (json.loads((folder / "teacher_metrics.json").read_text()),
            FeatureSet.load(folder, "teacher-samples"), (folder / "teacher_samples.png").read_bytes())


def _guidance_sweep(cfg: RunConfig, folders: str, teacher, student, dataset, net) -> list[dict]:
    """--sweep (a guided chain's student folders, first to last, comma-separated; the last is --student): FID and
    class accuracy at each evaluation.guidance_w of the CFG teacher and of each student."""
    from components.diffusion import GuidedDenoiser, load_denoiser, state_hash
    from components.metrics.evaluate import extractor_for, guidance_sweep

    paths = [p for p in folders.split(",") if p]
    chain = [load_denoiser(p, what="--sweep student") for p in paths]
    if not isinstance(student, GuidedDenoiser) or state_hash(chain[-1]) != state_hash(student):
        raise ConfigError(f"--sweep: its last folder '{paths[-1]}' must be --student, a guided student")
    steps = len(student.sampling["sigmas"]) - 1
    if cfg.distill.method == "guided" and cfg.distill.target_steps not in (None, steps):
        raise ConfigError(f"--student: samples in {steps} steps but distill.target_steps is "
                          f"{cfg.distill.target_steps}; dvc.yaml's halve stages must match the chain")
    ev, extractor, refs = cfg.evaluation, extractor_for(cfg.evaluation, net), _references(cfg, dataset, net)
    points = guidance_sweep(teacher, "teacher (CFG)", ev.guidance_w, extractor, net, dataset, refs, ev)
    for s in chain:
        points += guidance_sweep(s, f"student, {len(s.sampling['sigmas']) - 1}-step", ev.guidance_w, extractor,
                                 net, dataset, refs, ev)
    return points


def stage_evaluate(cfg: RunConfig, a: argparse.Namespace) -> None:
    """metrics.json (the run's summary), the FID-vs-NFE points, sample grids; the teacher's figures come from
    the teacher_eval stage's output (--teacher-eval), checked to be of this teacher, feature net, data,
    evaluation section and thread count."""
    from components.data import ImageDataset
    from components.diffusion import load_denoiser
    from components.metrics import FeatureNet
    from components.metrics.evaluate import evaluate_student_model
    from components.metrics.summary import summary_table
    from components.run_report import fid_points
    from components.viz import fid_vs_nfe, sample_grid

    ev = cfg.evaluation
    dataset, net = ImageDataset.load(a.dataset), FeatureNet.from_pretrained(a.features)
    teacher, student = load_denoiser(a.teacher, what="teacher"), load_denoiser(a.student, what="student")
    t_metrics, t_feats, t_grid = _saved_teacher_eval(Path(a.teacher_eval), _teacher_protocol(cfg, teacher, net,
                                                                                               dataset))
    result, s_gen = evaluate_student_model(student, teacher, dataset, net, _references(cfg, dataset, net), t_metrics,
                                           t_feats, ev)
    points = fid_points(t_metrics["fid_vs_nfe"], result)
    sweep = _guidance_sweep(cfg, a.sweep, teacher, student, dataset, net) if a.sweep else None
    with atomic_dir(a.out) as tmp:
        if sweep is not None:
            from components.viz import fid_vs_w

            write_json(tmp / "guidance_sweep.json", sweep)
            fid_vs_w(sweep).save(tmp / "fid_vs_w.png")
        (tmp / "teacher_samples.png").write_bytes(t_grid)
        sample_grid(s_gen.images.nan_to_num(0.0), s_gen.labels, dataset.num_classes,
                    ev.grid_per_class).save(tmp / "student_samples.png")
        fid_vs_nfe(points).save(tmp / "fid_vs_nfe.png")
        write_json(tmp / "teacher_metrics.json", t_metrics)
    write_csv(a.plots, points)
    write_json(a.metrics, result)
    print(summary_table(result))


def stage_export(cfg: RunConfig, a: argparse.Namespace) -> None:
    """The quality gate on metrics.json (no production model outside ZenML), then the stock-diffusers
    folder - or only REJECTED.md with the reasons - and the run report (HTML)."""
    from PIL import Image

    from components.data import ImageDataset
    from components.data.versioning import dvc_md5
    from components.diffusion import load_denoiser
    from components.export import card_fields, export_if_passed
    from components.gate import decide
    from components.run_report import run_report

    figures = json.loads(Path(a.metrics).read_text())
    decision = decide(cfg.gate, figures)
    print(decision.summary())
    data_md5 = dvc_md5(cfg.data.path)
    ev = Path(a.eval)
    sweep = ev / "guidance_sweep.json"              # a guided chain's evaluate --sweep
    guidance = (Image.open(ev / "fid_vs_w.png"), json.loads(sweep.read_text())) if sweep.is_file() else None
    page = run_report(figures, {**decision.to_dict(), "model_version": ""}, Image.open(ev / "fid_vs_nfe.png"),
                      Image.open(ev / "teacher_samples.png"), Image.open(ev / "student_samples.png"),
                      {"data": f"{cfg.data.path} (DVC md5 {data_md5})", "engine": "dvc repro",
                       "teacher sha256": figures.get("teacher_sha256", "")}, guidance=guidance)
    write_text(a.report, page)
    card = card_fields(cfg.distill.method, figures, ImageDataset.load(a.dataset).class_names, cfg.data.path, data_md5,
                       cfg.as_dict())
    if export_if_passed(load_denoiser(a.student, what="student"), a.out, decision.passed, decision.reasons, card,
                        overwrite=True, onnx=cfg.export.onnx):           # DVC owns `out`
        print(f"exported to {a.out}")


# stage name -> (function, the path options it reads besides --params/--out)
STAGES: dict[str, tuple[Callable[[RunConfig, argparse.Namespace], None], tuple[str, ...]]] = {
    "data": (stage_data, ()),
    "features": (stage_features, ("dataset",)),
    "teacher": (stage_teacher, ("dataset", "plots")),
    "pairs": (stage_pairs, ("teacher",)),
    "distill": (stage_distill, ("dataset", "teacher", "features", "pairs", "checkpoints", "plots")),
    "route": (stage_route, ("dataset", "students")),
    "teacher_eval": (stage_teacher_eval, ("dataset", "features", "teacher")),
    "evaluate": (stage_evaluate, ("dataset", "features", "teacher", "teacher_eval", "student", "metrics", "plots")),
    "export": (stage_export, ("dataset", "student", "metrics", "eval", "report")),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--distill-params", default=None, help="a YAML file with a distill section merged over the "
                    "params file's (params_ctm.yaml: the CTM student; another method keeps only the shared keys)")
    for name in ("dataset", "features", "teacher", "pairs", "student", "metrics", "plots", "eval", "report"):
        ap.add_argument(f"--{name}")
    ap.add_argument("--teacher-eval", default=None, help="evaluate: the teacher_eval stage's --out (its figures "
                    "are used when they were made with the same data, teacher, feature net, evaluation and threads)")
    ap.add_argument("--checkpoints", default="artifacts/checkpoints")
    ap.add_argument("--halving", type=int, default=0, help="distill: the K-th halving (1, 2, ...) of a guided chain "
                    "(distill.method guided with target_steps) on --teacher, the previous student; 0: the configured "
                    "method (a guided chain's stage 1)")
    ap.add_argument("--cascade", action="store_true", help="distill: DMD2 on the LowDiff cascade given as --teacher "
                    "(distill.method lowdiff's student), with distill.cascade_dmd2's settings")
    ap.add_argument("--subset", type=int, default=None, help="distill: the K-th class subset of multi-student "
                    "distillation (distill.method msd): runs that branch's stages in order")
    ap.add_argument("--students", default=None, help="route: the MSD branches' student folders in subset order, "
                    "comma-separated")
    ap.add_argument("--sweep", default=None, help="evaluate: a guided chain's student folders, first to last, "
                    "comma-separated (the last is --student): FID and class accuracy vs evaluation.guidance_w")
    ap.add_argument("--out", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    run, needs = STAGES[a.stage]
    missing = [f"--{n.replace('_', '-')}" for n in needs if n != "pairs" and getattr(a, n) is None]
    if missing:
        print(f"error: stage {a.stage} needs {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        from components.training import pin_threads

        cfg = load_params(a.params, distill=read_distill_file(a.distill_params) if a.distill_params else None)
        pin_threads(cfg.compute.threads)      # one count per stage: same params, same bytes
        run(cfg, a)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
