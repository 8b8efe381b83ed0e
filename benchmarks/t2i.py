"""Text-to-image benchmark on the built-in setting (captioned Fashion-MNIST 32x32): the whole route from
nothing - caption data, tokenizer + text encoder, VAE, latent cache, UNet teacher, feature net - then DMD2
students (1-step full, 4-step full, 1-step LoRA) over several training seeds, each trained in its own
process (its peak RSS is its own), all scored on the same held-out prompts, sampling seed and feature net.
Prints JSON; --write-docs writes docs/results/t2i/ (JSON + sample picture) and re-renders docs/results.md.

    python benchmarks/t2i.py [--seeds 0 1 2] [--write-docs]
    python benchmarks/t2i.py --quick            # minutes: tiny budgets, one seed (a smoke run, not a result)
    python benchmarks/t2i.py --from-json        # re-render docs/results.md from docs/results/t2i/t2i.json
    python benchmarks/t2i.py --work W --reuse --keep-rows --variants 'DMD2 1-step' --write-docs
        # only those rows, on the teacher and latents a finished run left in W (checked against t2i.json's teacher
        # hash; the route's upstream seconds are that run's); the other rows of t2i.json are kept, each with the
        # commit, date and distill.iterations it was trained at

Targets (issue: text-to-image): the route from nothing <= 60 min; teacher prompt-class agreement with CFG
>= 0.8x the real images'; 1-step student FID <= 1.3x the CFG teacher's and agreement >= 0.9x the teacher's;
LoRA student FID <= 1.3x the full student's."""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance, utc_now  # noqa: E402

OUT = ROOT / "docs" / "results" / "t2i"
VARIANTS = {                                    # row name -> distill overrides
    "DMD2 1-step": {"denoising_timesteps": [999]},
    "DMD2 4-step": {"denoising_timesteps": [999, 749, 499, 249]},
    "DMD2 1-step, LoRA r8": {"denoising_timesteps": [999], "lora": {"rank": 8, "alpha": 8.0}, "lr_gen": 2e-3},
}
QUICK = {"data": {"train_per_class": 200, "eval_per_class": 30}, "vae": {"train_steps": 60},
         "teacher": {"train_steps": 80, "sampler_steps": 8}, "distill": {"iterations": 6, "log_every": 3},
         "evaluation": {"num_samples": 200, "feature_steps": 60}}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of every student row")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run; never written to the docs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="folder for the run's parts (default: a temp folder)")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--from-json", action="store_true")
    p.add_argument("--memory", action="store_true", help="with --work of a finished run: re-measure each row's peak "
                   "RSS (VmHWM) over its first --memory-iterations in a fresh process, into docs/results/t2i/t2i.json")
    p.add_argument("--memory-iterations", type=int, default=20)
    p.add_argument("--reuse", action="store_true", help="with --work of a finished run: its teacher and latents "
                   "(the same teacher hash as docs/results/t2i/t2i.json records), not retrained")
    p.add_argument("--keep-rows", action="store_true", help="keep docs/results/t2i/t2i.json's rows this run does "
                   "not replace (another variant, or the same one at another distill.iterations)")
    a = p.parse_args(argv)
    if (a.reuse or a.memory) and not a.work:
        p.error("--reuse and --memory need --work, the folder of a finished run (teacher/, latents/)")
    if a.quick and a.write_docs:
        p.error("--quick runs are smoke runs: not written to the docs")
    return a


def _config(quick: bool):
    from components.t2i.run import load_t2i_params

    return load_t2i_params(ROOT / "params_t2i.yaml", **(QUICK if quick else {}))


def _distill_child(work: str, distill: dict, sampler_steps: int, threads: int, out: str, q) -> None:
    """One student in a fresh process: its wall-clock, peak RSS and trainable parameters are its own."""
    import torch

    torch.set_num_threads(threads)
    from components.config import parse_section
    from components.methods.dmd2 import DMD2Config
    from components.nets.lora import count_parameters
    from components.t2i.parts import LatentCache, SDParts, save_student
    from components.t2i.run import peak_rss_mb, stage_distill

    teacher, cache = SDParts.load(Path(work) / "teacher"), LatentCache.load(Path(work) / "latents")
    cfg = parse_section(DMD2Config, distill, "distill")
    method, history, seconds = stage_distill(cfg, teacher, cache, sampler_steps, progress=False)
    save_student(method.student(), out)
    q.put({"history": history, "distill_seconds": seconds, "peak_rss_mb": peak_rss_mb(),
           "trainable_parameters": count_parameters(method.G, trainable_only=True),
           "parameters": count_parameters(method.G)})


def run(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from components.t2i.evaluate import feature_net_for
    from components.t2i.export import export_student
    from components.t2i.run import (evaluate_models, stage_captions, stage_latents, stage_teacher, stage_text,
                                    stage_vae)

    cfg = _config(a.quick)
    prov = provenance(sys.argv[1:])
    work = Path(a.work or tempfile.mkdtemp(prefix="fewstep-t2i-"))
    seconds: dict[str, float] = {}

    def timed(name, fn, *args, **kw):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.1f} s", file=sys.stderr)
        return out

    data = timed("captions", stage_captions, cfg.data)
    reused = None
    if a.reuse:
        teacher, cache, vae_report, teacher_report, reused = reuse_upstream(work, seconds)
    else:
        text = timed("text_encoder", stage_text, cfg.text, data)
        vae_parts, vae_report = timed("vae", stage_vae, cfg.vae, data)
        parts = text.with_parts(vae=vae_parts.vae)
        cache = timed("latents", stage_latents, data, parts)
        teacher, teacher_report = timed("teacher", stage_teacher, cfg.teacher, cache, parts)
        teacher.save(work / "teacher")
        cache.save(work / "latents")
    net, net_report = timed("feature_net", feature_net_for, data, cfg.evaluation.feature_steps)
    metrics = timed("evaluate_teacher", evaluate_models, teacher, {}, cache, data, net, cfg.teacher, cfg.evaluation)
    rows, ctx = [], mp.get_context("spawn")
    for name in a.variants:
        per_seed = []
        for seed in a.seeds:
            distill = {**cfg.distill.model_dump(mode="json"), **VARIANTS[name], "seed": seed}
            folder = work / "students" / f"{name.replace(' ', '_').replace(',', '')}-it{distill['iterations']}-seed{seed}"
            q = ctx.Queue()
            proc = ctx.Process(target=_distill_child, args=(str(work), distill, cfg.teacher.sampler_steps,
                                                              a.threads, str(folder), q))
            t0 = time.perf_counter()
            proc.start()
            child = q.get()
            proc.join()
            if proc.exitcode:
                raise SystemExit(f"t2i benchmark: the distill process of {name!r} seed {seed} failed "
                                 f"(exit {proc.exitcode})")
            wall = time.perf_counter() - t0
            m = evaluate_models(teacher, {"student": folder}, cache, data, net, cfg.teacher, cfg.evaluation,
                                teacher_metrics=metrics)["student"]
            per_seed.append({**m, "seed": seed, "distill_seconds": child["distill_seconds"], "process_seconds": wall,
                             "peak_rss_mb": child["peak_rss_mb"], "trainable_parameters": child["trainable_parameters"],
                             "parameters": child["parameters"], "folder": str(folder),
                             "final_losses": {k: v for k, v in child["history"][-1].items() if k.startswith("loss")}})
            print(f"{name} seed {seed}: FID {m['fid']:.2f}, class {m.get('class_agreement', float('nan')):.3f}, "
                  f"{child['distill_seconds']:.0f} s", file=sys.stderr)
        rows.append({**summarise(name, VARIANTS[name], per_seed), "variant": name,
                     "iterations": cfg.distill.iterations})
    first = rows[0]["seeds"][0]["folder"]
    export_dir = work / "export"
    timed("export", export_student, first, teacher, export_dir)
    one_seed = sum(seconds[k] for k in ("captions", "text_encoder", "vae", "latents", "teacher", "feature_net",
                                        "evaluate_teacher", "export")) + rows[0]["seeds"][0]["process_seconds"]
    result = {"provenance": {**prov, "finished_utc": utc_now()}, "quick": a.quick, "config": cfg.as_dict(),
              "stage_seconds": seconds, "route_from_nothing_seconds": one_seed, "vae": vae_report,
              "teacher_report": teacher_report, "feature_net": net_report, "real": metrics["real"],
              "vae_floor": metrics["vae_floor"], "teacher": metrics["teacher"], "num_samples": metrics["num_samples"],
              "rows": rows}
    if reused:
        result["reused_upstream"] = reused
    if a.keep_rows:
        result["rows"] = rows + kept_rows(rows, cfg.distill.iterations)
    result["targets"] = targets(result)
    if a.write_docs:
        write_docs(result, teacher, cache, data, cfg)
    return result


def _previous() -> dict:
    path = OUT / "t2i.json"
    if not path.is_file():
        raise SystemExit(f"t2i benchmark: {path} is missing: --reuse and --keep-rows extend a "
                         "finished run")
    return json.loads(path.read_text())


def reuse_upstream(work: Path, seconds: dict):
    """The teacher and latents of the finished run in `work`, checked to be the teacher t2i.json records; that
    run's seconds for the stages not rerun. -> (teacher, cache, vae report, teacher report, provenance)."""
    from components.diffusion.denoiser import state_hash
    from components.t2i.parts import LatentCache, SDParts

    prev = _previous()
    teacher, cache = SDParts.load(work / "teacher"), LatentCache.load(work / "latents")
    sha = state_hash(teacher.unet)
    if sha != prev["teacher_report"]["teacher_sha256"]:
        raise SystemExit(f"t2i benchmark: --reuse: {work}/teacher has sha256 {sha[:12]}, not the "
                         f"{prev['teacher_report']['teacher_sha256'][:12]} that t2i.json's rows were scored with")
    for k in ("text_encoder", "vae", "latents", "teacher"):
        seconds[k] = prev["stage_seconds"][k]
    return teacher, cache, prev["vae"], prev["teacher_report"], {
        "stages": ["text_encoder", "vae", "latents", "teacher"], "commit": prev["provenance"]["commit"],
        "measured_utc": prev["provenance"]["started_utc"]}


def kept_rows(new_rows: list[dict], iterations: int) -> list[dict]:
    """t2i.json's rows that this run did not replace: another variant, or the same variant at another
    distill.iterations (named with its iterations); each keeps the commit and date it was measured at."""
    prev = _previous()
    done = {(r["variant"], r["iterations"]) for r in new_rows}
    out = []
    for r in prev["rows"]:
        r = {**r, "variant": r.get("variant", r["name"]),
             "iterations": r.get("iterations", prev["config"]["distill"]["iterations"])}
        r.setdefault("kept_from", {"commit": prev["provenance"]["commit"],
                                   "measured_utc": prev["provenance"]["started_utc"]})
        if (r["variant"], r["iterations"]) in done:
            continue
        r["name"] = r["variant"] if r["iterations"] == iterations else f"{r['variant']}, {r['iterations']} iterations"
        out.append(r)
    return out


def summarise(name: str, overrides: dict, per_seed: list[dict]) -> dict:
    def mean_std(key):
        vals = [r[key] for r in per_seed if key in r]
        if not vals:
            return None, None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    out = {"name": name, "overrides": overrides, "seeds": per_seed, "train_seeds": [r["seed"] for r in per_seed]}
    for key in ("fid", "class_agreement", "attribute_agreement", "distill_seconds", "peak_rss_mb", "sampling_seconds"):
        out[key], out[f"{key}_std"] = mean_std(key)
    out["nfe"], out["trainable_parameters"] = per_seed[0]["nfe"], per_seed[0]["trainable_parameters"]
    out["parameters"] = per_seed[0]["parameters"]
    return out


def targets(r: dict) -> list[dict]:
    """Each target of the issue: the measured value, the bound, met or not."""
    iterations = r["config"]["distill"]["iterations"]
    rows = {x.get("variant", x["name"]): x for x in r["rows"] if x.get("iterations", iterations) == iterations}
    t, real = r["teacher"], r["real"]
    out = [{"target": "route from nothing <= 60 min", "value": r["route_from_nothing_seconds"] / 60,
            "bound": 60.0, "met": r["route_from_nothing_seconds"] <= 3600}]
    if "class_accuracy" in real and "class_agreement" in t:
        v = t["class_agreement"] / real["class_accuracy"]
        out.append({"target": "teacher prompt-class agreement >= 0.8x real", "value": v, "bound": 0.8, "met": v >= 0.8})
    one = rows.get("DMD2 1-step")
    if one:
        v = one["fid"] / t["fid"]
        out.append({"target": "1-step FID <= 1.3x teacher", "value": v, "bound": 1.3, "met": v <= 1.3})
        if one.get("class_agreement") is not None and t.get("class_agreement"):
            v = one["class_agreement"] / t["class_agreement"]
            out.append({"target": "1-step agreement >= 0.9x teacher", "value": v, "bound": 0.9, "met": v >= 0.9})
    for lora in (x for x in r["rows"] if x.get("variant", x["name"]) == "DMD2 1-step, LoRA r8"):
        full = next((x for x in r["rows"] if x.get("variant", x["name"]) == "DMD2 1-step"
                     and x.get("iterations") == lora.get("iterations")), None)
        if full:                                        # the full student trained as long as the LoRA one
            v = lora["fid"] / full["fid"]
            out.append({"target": f"LoRA FID <= 1.3x full ({lora.get('iterations', iterations)} iterations)",
                        "value": v, "bound": 1.3, "met": v <= 1.3})
    return out


# -- docs ------------------------------------------------------------------------------------------------
def write_docs(result: dict, teacher, cache, data, cfg) -> None:
    from components.atomic import write_json

    OUT.mkdir(parents=True, exist_ok=True)
    from components.t2i.run import samples_picture

    students = {r["name"]: r["seeds"][0]["folder"] for r in result["rows"]}
    samples_picture(teacher, students, cache, data, cfg.teacher).save(OUT / "t2i-samples.png")
    result["pictures"] = {"samples": "t2i-samples.png"}
    write_json(OUT / "t2i.json", result)
    render_page()


def section(result: dict, rel: str) -> list[str]:
    """The text-to-image part of docs/results.md."""
    prov = result["provenance"]
    t, real, vf = result["teacher"], result["real"], result["vae_floor"]
    n = result["num_samples"]
    lines = ["## Text-to-image: built-in captioned Fashion-MNIST 32x32 (latent DMD2)", "",
             f"Measured {prov['started_utc']} to {prov['finished_utc']} on {prov['machine']}, at commit "
             f"`{prov['commit']}`. Command: `{shlex.join(['python', 'benchmarks/t2i.py', *prov['argv']])}`. "
             f"Every FID on {n} images for the first {n} held-out captions, sampling seed "
             f"{result['config']['evaluation']['seed']}, in the feature space of the dataset classifier; "
             "class agreement = the classifier's class equals the prompt's; attribute agreement = the measured "
             "brightness (dark/light) equals the prompt's. CLIP score needs pretrained CLIP weights, which are not "
             "on this machine: not computed.", "",
             "| model | NFE | FID | class agreement | attribute agreement | trainable params | distill iterations | "
             "distill s | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|",
             f"| real train images (floor) | - | {real['fid']:.2f} | {real.get('class_accuracy', float('nan')):.3f} | "
             "1.000 (by construction) | - | - | - | - |",
             f"| VAE reconstruction (floor of the latent route) | - | {vf['fid']:.2f} | - | - | - | - | - | - |",
             f"| teacher, CFG {t['guidance_scale']:g}, DDIM {t['nfe'] // 2} steps | {t['nfe']} | {t['fid']:.2f} | "
             f"{t.get('class_agreement', float('nan')):.3f} | {t.get('attribute_agreement', float('nan')):.3f} | "
             f"{result['teacher_report'].get('parameters', 0):,} | - | - | - |"]

    def rss(r):          # measured by --memory (VmHWM of a fresh process); ru_maxrss of a spawned child is the parent's
        return f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_iterations") else "-"

    def pm(r, k, f):
        return "-" if r.get(k) is None else f"{r[k]:{f}} +- {r[k + '_std']:{f}}"

    for r in result["rows"]:
        lines.append(f"| {r['name']} (seeds {', '.join(map(str, r['train_seeds']))}) | {r['nfe']} | {pm(r, 'fid', '.2f')} | "
                     f"{pm(r, 'class_agreement', '.3f')} | {pm(r, 'attribute_agreement', '.3f')} | "
                     f"{r['trainable_parameters']:,} of {r['parameters']:,} | "
                     f"{r.get('iterations', result['config']['distill']['iterations'])} | {r['distill_seconds']:.0f} | "
                     f"{rss(r)} |")
    kept = [r for r in result["rows"] if r.get("kept_from")]
    if kept:
        lines += ["", "Rows kept from an earlier run on the same teacher (sha256 "
                  f"`{result['teacher_report']['teacher_sha256'][:12]}`), data, feature net and evaluation: " +
                  "; ".join(f"{r['name']} (`{r['kept_from']['commit'][:12]}`, {r['kept_from']['measured_utc']})"
                            for r in kept) + "."]
    reused = result.get("reused_upstream")
    if reused:
        lines += ["", f"This run trained only the students: the VAE, latents and teacher (and their stage seconds "
                  f"below) are those of the run at `{reused['commit'][:12]}` ({reused['measured_utc']}), "
                  "checked by the teacher's hash."]
    s = result["stage_seconds"]
    mem = result.get("memory_provenance")
    if mem:
        its = result["rows"][0].get("peak_rss_iterations")
        lines += ["", f"Peak RSS: VmHWM of a fresh process training the row (seed 0) for its first {its} iterations, "
                  f"measured {mem['started_utc']} at commit `{mem['commit']}` on the same machine "
                  f"(`{shlex.join(['python', 'benchmarks/t2i.py', *mem['argv']])}`)."]
    lines += ["", "Stage wall-clock (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s.items()) +
              f"; the route from nothing with one 1-step student: {result['route_from_nothing_seconds'] / 60:.1f} min.",
              "", "| target | measured | bound | met |", "|---|---|---|---|"]
    lines += [f"| {x['target']} | {x['value']:.3f} | {x['bound']:g} | {'yes' if x['met'] else 'no'} |"
              for x in result["targets"]]
    if result.get("pictures"):
        lines += ["", "Rows: real held-out images, the teacher (CFG), then each student (training seed 0); columns: "
                  "the same ten held-out captions and noise.", "",
                  f"![text-to-image samples]({rel}/{result['pictures']['samples']})"]
    return lines + [""]


def render_page() -> None:
    """docs/results.md: the leaderboard's page (benchmarks/leaderboard.py renders it, this section included)."""
    from benchmarks.leaderboard import PAGE, render

    render(ROOT / "docs" / "results", ROOT / PAGE)


def memory(a) -> dict:
    """Peak RSS of each row's training, its first iterations in a fresh process (optimiser states and activations
    are all allocated by then): the saved teacher and latents of a finished run (--work), merged into t2i.json."""
    from components.atomic import write_json

    path = OUT / "t2i.json"
    result = json.loads(path.read_text())
    cfg = result["config"]
    ctx, out = mp.get_context("spawn"), {}
    for row in result["rows"]:
        distill = {**cfg["distill"], **row["overrides"], "seed": 0, "iterations": a.memory_iterations,
                   "log_every": a.memory_iterations}
        q = ctx.Queue()
        with tempfile.TemporaryDirectory() as tmp:
            proc = ctx.Process(target=_distill_child, args=(a.work, distill, cfg["teacher"]["sampler_steps"],
                                                              a.threads, str(Path(tmp) / "s"), q))
            proc.start()
            child = q.get()
            proc.join()
        row["peak_rss_mb"], row["peak_rss_mb_std"] = child["peak_rss_mb"], None
        row["peak_rss_iterations"] = a.memory_iterations
        out[row["name"]] = child["peak_rss_mb"]
        print(f"{row['name']}: peak RSS {child['peak_rss_mb']:.0f} MB", file=sys.stderr)
    result["memory_provenance"] = {**provenance(sys.argv[1:]), "finished_utc": utc_now()}
    write_json(path, result)
    render_page()
    return out


def main(argv=None) -> dict | None:
    a = parse_args(argv)
    if a.memory:
        if not a.work:
            raise SystemExit("t2i benchmark: --memory needs --work, the folder of a finished run (teacher/, latents/)")
        print(json.dumps(memory(a), indent=1))
        return None
    if a.from_json:
        render_page()
        return None
    result = run(a)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config",)}, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
