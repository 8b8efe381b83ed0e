"""`dvc repro` from a fresh clone, one chain at a time: how long each chain takes here, what its quality gate
said, and the results it leaves in git (dvc.lock, metrics*.json, plots/) - or whether they equal the committed ones.

    python benchmarks/dvc_repro.py                 # measure; print JSON
    python benchmarks/dvc_repro.py --write         # ... and copy dvc.lock, metrics*.json, plots/ into the checkout,
                                                   # and write docs/dvc-repro.md (date, machine, commit)
    python benchmarks/dvc_repro.py --check         # ... and compare with the committed dvc.lock and metrics:
                                                   # exit 1 when a model's hash or a figure differs
    python benchmarks/dvc_repro.py --check --chains export   # only the DMD2 chain (and the stages it reads)
    python benchmarks/dvc_repro.py --write --chains export_t2i   # one chain: its lock entries, outputs and row
                                                   # replace theirs; the other rows keep their commit

The clone is of HEAD (a dirty checkout is refused: the lock must describe committed code), with the built-in
digits written as `make data` does (and Fashion-MNIST as `make fashion-mnist` does, for the chains that read it);
stage commands run this interpreter's `python` (its folder first on PATH).
Chains run in CHAINS order, so the first one also pays for the shared stages (data, feature net, teacher, pairs,
the teacher's figures). A last plain `dvc repro` must find nothing to do. Run it alone: a second torch process
on 2 cores distorts every figure, and at another `compute.threads` the floats differ (docs/dvc.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance  # noqa: E402

# (target, the metrics file its evaluate stage writes): every chain of dvc.yaml, the shared stages with the first
CHAINS = (("export", "metrics.json"), ("export_ctm", "metrics_ctm.json"), ("export_guided", "metrics_guided.json"),
          ("export_msd", "metrics_msd.json"), ("export_lowdiff", "metrics_lowdiff.json"),
          ("export_lowdiff_dmd2", "metrics_lowdiff_dmd2.json"), ("export_t2i", "metrics_t2i.json"))
# chains that read Fashion-MNIST (data/fashion_mnist.npz, written in the clone as `make fashion-mnist` does)
FASHION_CHAINS = {"export_t2i"}
# metrics that are wall-clock measurements: they differ from run to run, everything else must not
WALL_CLOCK = re.compile(r"latency|seconds|throughput|sampling_speedup")
# outputs that embed wall-clock figures (the evaluations' JSON, reports and model cards): their md5 differs from run
# to run; the models and data (dataset, feature net, teacher, pairs, students, checkpoints) must not
TIMED_OUTS = re.compile(r"^models/|(^|/)(eval|teacher_eval|report)$|^metrics[a-z_]*\.json$")


def _env(bin_dir: Path) -> dict:
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1",
                ZENML_ANALYTICS_OPT_IN="false", WANDB_MODE="offline", GX_ANALYTICS_ENABLED="false")


def _run(args: list[str], cwd: Path, env: dict) -> str:
    """Run, echo its output as it comes (DVC's progress), -> the output; a failure stops with its tail."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        print(line, end="", file=sys.stderr, flush=True)
    if proc.wait():
        raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}\n{''.join(lines)[-3000:]}")
    return "".join(lines)


def git_outputs() -> list[str]:
    """dvc.yaml's outputs that DVC leaves to git (`cache: false`: metrics and plots), foreach stages expanded."""
    paths = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        body, items = stage.get("do", stage), stage.get("foreach") or [None]
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind, []):
                if isinstance(out, dict) and any((v or {}).get("cache") is False for v in out.values()):
                    for item in items:
                        paths += [p.replace("${item}", str(item)).replace("${key}", str(item)) for p in out]
    return sorted(set(paths))


def lock_outs(lock: Path) -> dict[str, str]:
    """{output path: md5} of a dvc.lock."""
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {o["path"]: o["md5"] for s in stages.values() for o in s.get("outs", [])}


def flat(metrics: dict, prefix: str = "") -> dict:
    """{'teacher.fid': ...}: the text-to-image chain's metrics nest per model."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fids(metrics: dict) -> tuple[float, float]:
    """(student FID, teacher FID) of a chain's metrics file (flat, or nested per model: metrics_t2i.json)."""
    if "student_fid" in metrics:
        return metrics["student_fid"], metrics["teacher_fid"]
    return metrics["student"]["fid"], metrics["teacher"]["fid"]


def compare(clone: Path, chains) -> dict:
    """The clone's repro of `chains` against the committed dvc.lock and metrics: which outputs' md5 and which figures
    differ (among the outputs the clone's repro wrote: all of them when every chain ran)."""
    ours, theirs = lock_outs(ROOT / "dvc.lock"), lock_outs(clone / "dvc.lock")
    differ = sorted(p for p in theirs if ours.get(p) != theirs[p])
    figures = {}
    for _, name in chains:
        a, b = flat(json.loads((ROOT / name).read_text())), flat(json.loads((clone / name).read_text()))
        bad = sorted(k for k in a.keys() | b.keys() if not WALL_CLOCK.search(k) and a.get(k) != b.get(k))
        if bad:
            figures[name] = {k: [a.get(k), b.get(k)] for k in bad}
    return {"outs_differing": differ, "outs_differing_unexpectedly": [p for p in differ if not TIMED_OUTS.search(p)],
            "figures_differing": figures, "outs_compared": len(theirs)}


def stale_stages(clone: Path, env: dict, ran: set[str]) -> list[str]:
    """Stages of the clone that did not run here and whose code or params changed since the committed dvc.lock
    (`dvc status`: a modified dependency; a missing upstream output is not counted): what a full run would redo."""
    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=clone, env=env, capture_output=True,
                         text=True, check=True).stdout
    stale = []
    for stage, changes in json.loads(out or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if isinstance(change, dict) and stage not in ran and any(
                    v == "modified" for k in ("changed deps",) for v in (change.get(k) or {}).values()):
                stale.append(stage)
                break
    return sorted(stale)


def merge_rows(result: dict) -> dict:
    """--chains with --write: these chains' rows replace theirs in docs/dvc-repro.json and the other rows stay, each
    with the commit it was measured at. The clone started from the committed dvc.lock, so its lock is the committed
    one plus these chains' stages (valid while the other chains' entries are: the full run checks that)."""
    old = json.loads((ROOT / "docs" / "dvc-repro.json").read_text())
    new = {c["target"]: c for c in result["chains"]}
    rows = [new.pop(c["target"], None) or {"commit": old["provenance"]["commit"],
                                           "measured_utc": old["provenance"]["started_utc"], **c}
            for c in old["chains"]]
    rows += list(new.values())
    return {**old, "chains": rows, "total_seconds": sum(c["seconds"] for c in rows),
            "partial": {"provenance": result["provenance"], "stale_elsewhere": result.get("stale_elsewhere", []),
                        "targets": [c for c, _ in CHAINS if c in {r["target"] for r in result["chains"]}]}}


def _partial_note(result: dict) -> str:
    part = result.get("partial")
    if not part:
        return ""
    p = part["provenance"]
    return (f"The rows of {', '.join(f'`{t}`' for t in part['targets'])} were measured alone (`--chains`) on "
            f"{p['started_utc']} at commit `{p['commit']}`, from a fresh clone with the committed `dvc.lock`; the "
            "others, and the plain `dvc repro` below, at the commit above.\n" + (
                f"\n**Stale since:** at the later commit `dvc status` finds changed code or params in "
                f"{', '.join(f'`{s}`' for s in part['stale_elsewhere'])}: a full `dvc repro` reruns them, and their "
                "lock entries are the earlier commit's until `benchmarks/dvc_repro.py --write` runs every chain "
                "again.\n" if part.get("stale_elsewhere") else ""))


def render(result: dict) -> str:
    prov = result["provenance"]
    rows = "\n".join(
        f"| `dvc repro {c['target']}` | {c['seconds'] / 60:.1f} | {', '.join(c['stages']) or '-'} | "
        f"{c['student_fid']:.2f} (teacher {c['teacher_fid']:.2f}) | {c['gate']} |" for c in result["chains"])
    return f"""# `dvc repro` here: what each chain rebuilds and how long it takes

Generated by `benchmarks/dvc_repro.py --write`: do not edit by hand. Measured {prov['started_utc']} on
{prov['machine']}, at commit `{prov['commit']}`, from a fresh clone (built-in digits written as `make data` does,
`compute.threads` {result['threads']}).

`dvc repro` (`make repro`) rebuilds every chain of `dvc.yaml`: **{result['total_seconds'] / 60:.0f} minutes** here
in all. One chain alone is `dvc repro <target>`; the first chain run also pays for the shared stages (data,
feature net, teacher, pairs, the teacher's figures), so a later chain alone takes about its row below.

| command | minutes | stages it ran | student FID | quality gate |
|---|---|---|---|---|
{rows}

{_partial_note(result)}
{'At that commit, after every chain' if result.get('partial') else 'After them'}, a plain `dvc repro` ran nothing (`{result['last_repro']}`), and the resulting `dvc.lock`, `metrics*.json`
and `plots/` are the committed ones. What may differ in your clone: the wall-clock figures (latency, throughput,
sampling seconds) and the outputs that embed them; every model's bytes and every other figure are the same at the
same `compute.threads` ([dvc.md](dvc.md#what-is-bit-identical)).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="copy the results into the checkout, write docs/dvc-repro.md")
    ap.add_argument("--check", action="store_true", help="compare with the committed dvc.lock and metrics")
    ap.add_argument("--keep", help="clone into this folder (kept) instead of a temporary one")
    ap.add_argument("--chains", help="comma-separated targets to run (default: every chain; then --write is refused)")
    a = ap.parse_args(argv)
    chains = CHAINS
    if a.chains:
        known = dict(CHAINS)
        unknown = [c for c in a.chains.split(",") if c not in known]
        if unknown:
            raise SystemExit(f"--chains: unknown target {unknown[0]!r} (valid: {', '.join(known)})")
        chains = tuple((c, known[c]) for c in a.chains.split(","))
    prov = provenance(sys.argv)
    if prov["commit"].endswith("(dirty)"):
        raise SystemExit("the checkout has uncommitted changes: commit them first (the lock must describe committed "
                         "code)")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="fewstep-repro-"))
    clone = work / "clone"
    env = _env(Path(sys.executable).parent)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    _run([sys.executable, "-m", "components.data.builtin", "--out", "data/digits.npz"], clone, env)
    if any(target in FASHION_CHAINS for target, _ in chains):
        _run([sys.executable, "-m", "components.data.fashion_mnist", "--out", "data/fashion_mnist.npz"], clone, env)
    threads = yaml.safe_load((clone / "params.yaml").read_text())["compute"]["threads"]
    runs, t_all = [], time.perf_counter()
    for target, metrics_file in chains:
        t0 = time.perf_counter()
        out = _run([sys.executable, "-m", "dvc", "repro", target], clone, env)      # the venv's dvc
        metrics = json.loads((clone / metrics_file).read_text())
        gate = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("quality gate:")),
                    "not run")
        student_fid, teacher_fid = fids(metrics)
        runs.append({"target": target, "seconds": time.perf_counter() - t0,
                     "stages": re.findall(r"Running stage '([^']+)'", out), "gate": gate,
                     "student_fid": student_fid, "teacher_fid": teacher_fid,
                     "commit": prov["commit"], "measured_utc": prov["started_utc"]})
    result = {"provenance": prov, "threads": threads, "chains": runs, "total_seconds": time.perf_counter() - t_all}
    if chains == CHAINS:
        last = _run([sys.executable, "-m", "dvc", "repro"], clone, env)
        ran_again = re.findall(r"Running stage '([^']+)'", last)
        result["last_repro"] = "; ".join(f"ran {s}" for s in ran_again) or last.strip().splitlines()[-1]
        if ran_again:
            raise SystemExit(f"a plain `dvc repro` after the chains ran {ran_again}: CHAINS misses a target")
    if chains != CHAINS:
        result["stale_elsewhere"] = stale_stages(clone, env, {s for c in runs for s in c["stages"]})
    if a.check:
        result["check"] = compare(clone, chains)
    if a.write:
        if chains != CHAINS:
            result = merge_rows(result)
        for rel in git_outputs():
            if (clone / rel).is_file():
                (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(clone / rel, ROOT / rel)
        shutil.copyfile(clone / "dvc.lock", ROOT / "dvc.lock")
        tmp = ROOT / "docs" / "dvc-repro.md.tmp"
        tmp.write_text(render(result))
        tmp.replace(ROOT / "docs" / "dvc-repro.md")
        (ROOT / "docs" / "dvc-repro.json").write_text(json.dumps(result, indent=1) + "\n")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    check = result.get("check", {})
    return 1 if check.get("outs_differing_unexpectedly") or check.get("figures_differing") else 0


if __name__ == "__main__":
    raise SystemExit(main())
