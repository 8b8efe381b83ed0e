"""The DVC stages of the text-to-image route (dvc.yaml's *_t2i stages): the same stage functions
(components/t2i/run.py) and the same params_t2i.yaml as the ZenML t2i_pipeline.

    python -m components.t2i.stages captions --params params_t2i.yaml --out artifacts/t2i/captions
    python -m components.t2i.stages text     --params ... --captions artifacts/t2i/captions --out artifacts/t2i/text
    python -m components.t2i.stages vae      --params ... --captions ... --out artifacts/t2i/vae
    python -m components.t2i.stages latents  --params ... --captions ... --text ... --vae ...
                                             --out artifacts/t2i/latents
    python -m components.t2i.stages teacher  --params ... --latents ... --text ... --vae ... --out artifacts/t2i/teacher
    python -m components.t2i.stages features --params ... --captions ... --out artifacts/t2i/feature_net
    python -m components.t2i.stages distill  --params ... --teacher ... --latents ...
                                             --out artifacts/t2i/student --plots plots/t2i_distill_losses.csv
    python -m components.t2i.stages evaluate --params ... --teacher ... --student ... --latents ... --captions ...
                                             --features ... --metrics metrics_t2i.json --out artifacts/t2i/eval
    python -m components.t2i.stages export   --params ... --teacher ... --student ... --metrics metrics_t2i.json
                                             --out models/t2i_student

With teacher.path (a user's SD 1.5 / 2.x folder) `text` and `vae` write that folder's text parts and VAE (nothing
is trained) and `teacher` passes the folder's UNet and scheduler through. Each stage writes into a temp folder
beside its output and renames it when done; bad input exits 1 with one line naming the file or field."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")        # nothing is downloaded: every part is built here or local

from components.atomic import atomic_dir, write_json, write_text  # noqa: E402
from components.config import ConfigError  # noqa: E402
from components.t2i.run import T2IRunConfig, load_t2i_params  # noqa: E402


def _captions(a):
    from components.t2i.captions import CaptionDataset

    return CaptionDataset.load(a.captions)


def _parts(path):
    from components.t2i.parts import SDParts

    return SDParts.load(path)


def _user_parts(cfg: T2IRunConfig, *names: str):
    """The named parts of the user's SD folder (teacher.path), the rest left out."""
    from components.t2i.run import stage_user_teacher

    full = stage_user_teacher(cfg.teacher.path)
    return full.with_parts(**{k: None for k in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
                              if k not in names})


def stage_captions(cfg: T2IRunConfig, a) -> None:
    from components.t2i.run import stage_captions as build

    data = build(cfg.data)
    with atomic_dir(a.out) as tmp:
        data.save(tmp)
    print(f"captions: {len(data)} images, {int(data.is_eval.sum())} held out, {len(data.prompts())} prompts "
          f"(fingerprint {data.fingerprint()}) -> {a.out}")


def stage_text(cfg: T2IRunConfig, a) -> None:
    from components.t2i.run import stage_text as build

    parts = _user_parts(cfg, "tokenizer", "text_encoder") if cfg.teacher.path else build(cfg.text, _captions(a))
    with atomic_dir(a.out) as tmp:
        parts.save(tmp)
    print(f"text parts: vocabulary {len(parts.tokenizer)} -> {a.out}")


def stage_vae(cfg: T2IRunConfig, a) -> None:
    from components.t2i.run import stage_vae as build

    if cfg.teacher.path:
        parts, report = _user_parts(cfg, "vae"), {"loaded_from": cfg.teacher.path}
    else:
        parts, report = build(cfg.vae, _captions(a))
    with atomic_dir(a.out) as tmp:
        parts.save(tmp)
    print(f"vae: {report} -> {a.out}")


def stage_latents(cfg: T2IRunConfig, a) -> None:
    from components.t2i.run import stage_latents as build

    cache = build(_captions(a), _parts(a.text).with_parts(vae=_parts(a.vae).vae))
    with atomic_dir(a.out) as tmp:
        cache.save(tmp)
    print(f"latents: {tuple(cache.latents.shape)}, {len(cache.prompts)} prompt embeddings -> {a.out}")


def stage_teacher(cfg: T2IRunConfig, a) -> None:
    from components.t2i.parts import LatentCache
    from components.t2i.run import stage_teacher as build

    if cfg.teacher.path:
        base = _user_parts(cfg, "tokenizer", "text_encoder", "vae", "unet", "scheduler")
    else:
        base = _parts(a.text).with_parts(vae=_parts(a.vae).vae)
    full, report = build(cfg.teacher, LatentCache.load(a.latents), base)
    with atomic_dir(a.out) as tmp:
        full.save(tmp)
    print(f"teacher: {report} -> {a.out}")


def stage_features(cfg: T2IRunConfig, a) -> None:
    from components.t2i.evaluate import feature_net_for

    net, report = feature_net_for(_captions(a), cfg.evaluation.feature_steps)
    with atomic_dir(a.out) as tmp:
        net.save_pretrained(tmp)
    print(f"feature net: {report} -> {a.out}")


def stage_distill(cfg: T2IRunConfig, a) -> None:
    from components.nets.lora import count_parameters
    from components.stages import write_csv
    from components.t2i.parts import LatentCache, save_student
    from components.t2i.run import peak_rss_mb, stage_distill as run

    method, history, seconds = run(cfg.distill, _parts(a.teacher), LatentCache.load(a.latents),
                                   cfg.teacher.sampler_steps)
    info = save_student(method.student(), a.out)
    if a.plots:
        write_csv(a.plots, history)
    print(f"student: {len(info['timesteps'])} step(s) at {info['timesteps']}, "
          f"{count_parameters(method.G, trainable_only=True):,} trainable parameters, {seconds:.0f} s, "
          f"peak RSS {peak_rss_mb():.0f} MB -> {a.out}")


def stage_evaluate(cfg: T2IRunConfig, a) -> None:
    """metrics_t2i.json (teacher with CFG, the student, the VAE and real floors) and the samples picture."""
    from components.metrics import FeatureNet
    from components.t2i.parts import LatentCache
    from components.t2i.run import evaluate_models, samples_picture

    teacher, cache, data = _parts(a.teacher), LatentCache.load(a.latents), _captions(a)
    metrics = evaluate_models(teacher, {"student": a.student}, cache, data, FeatureNet.from_pretrained(a.features),
                              cfg.teacher, cfg.evaluation)
    with atomic_dir(a.out) as tmp:
        samples_picture(teacher, {"student": a.student}, cache, data, cfg.teacher,
                        seed=cfg.evaluation.seed).save(tmp / "samples.png")
    write_json(a.metrics, metrics)
    t, s = metrics["teacher"], metrics["student"]
    print(f"teacher FID {t['fid']:.2f} ({t['nfe']} NFE), student FID {s['fid']:.2f} ({s['nfe']} NFE), "
          f"VAE floor {metrics['vae_floor']['fid']:.2f} -> {a.metrics}")


def stage_export(cfg: T2IRunConfig, a) -> None:
    """The quality gate on metrics_t2i.json, then the stock StableDiffusionPipeline folder - or only REJECTED.md
    with the gate's reasons."""
    import json

    from components.t2i.export import export_student
    from components.t2i.run import decide_gate

    metrics = json.loads(Path(a.metrics).read_text())
    decision = decide_gate(cfg.gate, metrics)
    print(decision.summary())
    if decision.passed:
        export_student(a.student, _parts(a.teacher), a.out, {"student_fid": metrics["student"]["fid"],
                                                             "teacher_fid": metrics["teacher"]["fid"]})
        print(f"exported to {a.out}")
        return
    with atomic_dir(a.out) as tmp:
        write_text(tmp / "REJECTED.md", "# Not exported: the quality gate rejected the student\n\n" +
                   "".join(f"- {r}\n" for r in decision.reasons))
    print(f"not exported: {a.out}/REJECTED.md")


# stage name -> (function, the path options it needs besides --params/--out)
STAGES: dict[str, tuple[Callable[[T2IRunConfig, argparse.Namespace], None], tuple[str, ...]]] = {
    "captions": (stage_captions, ()),
    "text": (stage_text, ("captions",)),
    "vae": (stage_vae, ("captions",)),
    "latents": (stage_latents, ("captions", "text", "vae")),
    "teacher": (stage_teacher, ("latents", "text", "vae")),
    "features": (stage_features, ("captions",)),
    "distill": (stage_distill, ("teacher", "latents")),
    "evaluate": (stage_evaluate, ("teacher", "student", "latents", "captions", "features", "metrics")),
    "export": (stage_export, ("teacher", "student", "metrics")),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("--params", default="params_t2i.yaml")
    for name in ("captions", "text", "vae", "latents", "teacher", "features", "student", "metrics", "plots"):
        ap.add_argument(f"--{name}")
    ap.add_argument("--out", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    run, needs = STAGES[a.stage]
    missing = [f"--{n}" for n in needs if getattr(a, n) is None]
    if missing:
        print(f"error: stage {a.stage} needs {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        from components.training import pin_threads

        if not Path(a.params).is_file():
            raise ConfigError(f"'{a.params}': no such parameter file")
        cfg = load_t2i_params(a.params)
        pin_threads(cfg.compute.threads)      # one count per stage: same params, same bytes
        run(cfg, a)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
