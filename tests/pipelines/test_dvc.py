"""DVC end to end: `dvc repro` of dvc.yaml on a tiny params.yaml in a throwaway repo, the same
figures as `zenml pipeline run` with the same parameters, and the DVC commands users run."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data.builtin import materialize_digits
from components.params import merge
from tests.conftest import shared_once, write_image_folder
from tests.pipelines.conftest import ROOT

BIN = Path(sys.executable).parent
CHAINS = ("export", "export_ctm")      # the chains `dvc repro` runs here; the guided chain's commands run in-process
DVC = str(BIN / "dvc")
# figures that depend only on seeds and parameters (wall-clock figures differ from run to run)
DETERMINISTIC = ("teacher_fid", "teacher_fid_train", "teacher_class_acc", "teacher_nfe", "student_fid",
                 "student_fid_train", "student_class_acc", "student_nfe", "distill_gap_fid", "real_floor_fid",
                 "nfe_speedup", "teacher_sha256", "num_samples", "feature_net", "teacher_kid", "student_kid",
                 "agreement_rmse", "agreement_class", "student_nonfinite_samples")


def tiny_params(data_path: Path) -> dict:
    """params.yaml with the overrides of tests/pipelines/tiny.yaml: the same values ZenML gets."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "tests" / "pipelines" / "tiny.yaml").read_text())["parameters"]
    for section, values in tiny.items():
        if section != "params_file":
            params[section] = merge(params[section], values)
    params["data"]["path"] = str(data_path)
    return params


def _sh(args, cwd, env, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if check:
        assert r.returncode == 0, f"{args}: {(r.stdout + r.stderr)[-3000:]}"
    return r


@pytest.fixture(scope="session")
def dvc_repo(tmp_path_factory):
    """A git + DVC repo holding the project's dvc.yaml and components/, with tiny parameters (the CTM and guided
    chains' params files too), after its first `dvc repro` of the DMD2 and CTM chains -> (repo, env, that
    repro's stdout, its metrics.json). Built once per session (shared_once)."""
    def build(repo):
        shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
        shutil.copy(ROOT / "params_ctm.yaml", repo / "params_ctm.yaml")
        shutil.copy(ROOT / "params_t2i.yaml", repo / "params_t2i.yaml")     # read by dvc.yaml's t2i chain (not run here)
        # the guided chain at tiny size: the same keys as params_guided.yaml, 8 -> 4 -> 2 steps (two halvings,
        # as dvc.yaml's halve stages), a few iterations each
        guided = yaml.safe_load((ROOT / "params_guided.yaml").read_text())
        guided["distill"].update(iterations=4, sampling_steps=8, target_steps=2, halving={"iterations": 2})
        (repo / "params_guided.yaml").write_text(yaml.safe_dump(guided, sort_keys=False))
        msd = yaml.safe_load((ROOT / "params_msd.yaml").read_text())      # K = 4 as dvc.yaml's foreach, tiny
        msd["distill"].update(iterations=2, log_every=1, fid_every=0, checkpoint_every=0)
        (repo / "params_msd.yaml").write_text(yaml.safe_dump(msd, sort_keys=False))
        lowdiff = yaml.safe_load((ROOT / "params_lowdiff.yaml").read_text())   # the digits' 4x4 -> 8x8, tiny
        lowdiff["distill"].update(iterations=4, batch_size=16, steps=[2, 2], log_every=2, fid_every=0,
                                  checkpoint_every=2, cascade_dmd2={"iterations": 2})
        (repo / "params_lowdiff.yaml").write_text(yaml.safe_dump(lowdiff, sort_keys=False))
        shutil.copytree(ROOT / "components", repo / "components", ignore=shutil.ignore_patterns("__pycache__"))
        materialize_digits(repo / "data" / "digits.npz")
        shutil.copy(ROOT / "data.dvc", repo / "data.dvc")      # the committed data version: `data` reads it
        (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(repo / "data" / "digits.npz"), sort_keys=False))
        env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1",
                   GX_ANALYTICS_ENABLED="false", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                   GIT_COMMITTER_EMAIL="t@t")
        _sh(["git", "init", "-q"], repo, env)
        _sh([DVC, "init", "-q"], repo, env)
        first = _sh([DVC, "repro", *CHAINS], repo, env)     # the guided chain: test_the_guided_chain_... below
        return {"repo": str(repo), "env": env, "stdout": first.stdout,
                "metrics": json.loads((repo / "metrics.json").read_text())}

    built = shared_once(tmp_path_factory, "dvc_repo", build)
    return Path(built["repo"]), built["env"], built["stdout"], built["metrics"]


def test_dvc_repro_builds_everything_then_does_nothing(dvc_repo):
    repo, env, first, _ = dvc_repo
    assert "Verifying data sources in stage: 'data.dvc'" in first        # the data version DVC reads: data.dvc
    for stage in ("data", "features", "teacher", "pairs", "distill", "teacher_eval", "evaluate", "export"):
        assert f"Running stage '{stage}'" in first
    # the tiny student fails the default gate (class accuracy, among others): the export holds only the reasons
    verdict = next(line for line in first.splitlines() if line.startswith("quality gate:"))
    assert verdict.startswith("quality gate: REJECTED: ") and "class accuracy floor" in verdict
    assert [p.name for p in (repo / "models" / "dmd2_student").iterdir()] == ["REJECTED.md"]
    metrics = json.loads((repo / "metrics.json").read_text())
    assert metrics["student_nfe"] == 1 and metrics["teacher_nfe"] == 5 and metrics["num_samples"] == 100
    for d in ("dataset", "feature_net", "teacher", "pairs", "student", "eval"):
        assert (repo / "artifacts" / d).is_dir()
    # tiny.yaml checkpoints every 3 of 6 iterations: the run's last two checkpoints are kept
    (run,) = list((repo / "artifacts" / "checkpoints").iterdir())
    assert sorted(p.name for p in run.iterdir()) == ["step-00000003", "step-00000006"]
    files = [p.name for p in (repo / "artifacts").rglob("*") if p.is_file()]
    assert "diffusion_pytorch_model.safetensors" in files and "manifest.csv" in files and "validation.html" in files
    assert not any(f.endswith((".pkl", ".pickle", ".pt", ".bin")) for f in files)
    assert not any(p.name.endswith(".tmp") for p in (repo / "artifacts").iterdir())

    # the CTM chain (params_ctm.yaml over params.yaml) on the same data, feature net and teacher stages
    for stage in ("distill_ctm", "evaluate_ctm", "export_ctm"):
        assert f"Running stage '{stage}'" in first
    ctm = json.loads((repo / "metrics_ctm.json").read_text())
    assert ctm["teacher_fid"] == metrics["teacher_fid"] and ctm["student_fid"] != metrics["student_fid"]
    assert {(p["steps"], p["gamma"]) for p in ctm["student_fid_vs_nfe"]} == {(n, g) for n in (1, 2, 4)
                                                                           for g in (0.0, 0.5, 1.0)}
    assert (repo / "artifacts" / "ctm" / "student" / "s_embedding.safetensors").is_file()

    second = _sh([DVC, "repro", *CHAINS], repo, env)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in _sh([DVC, "status", *CHAINS, "--with-deps"], repo, env).stdout

    shown = json.loads(_sh([DVC, "metrics", "show", "--json"], repo, env).stdout)
    assert "student_fid" in json.dumps(shown)
    _sh([DVC, "plots", "show"], repo, env)
    assert (repo / "dvc_plots" / "index.html").is_file()


def test_a_changed_parameter_reruns_only_its_stage(dvc_repo):
    repo, env, _, _ = dvc_repo
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-qm", "baseline"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["excess_fid_ratio_max"] = 3.5                     # read by the export stages only
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _sh([DVC, "status", *CHAINS], repo, env).stdout
    assert "export:" in status and "export_ctm:" in status and "evaluate:" not in status and "teacher:" not in status
    r = _sh([DVC, "repro", "export"], repo, env)            # the DMD2 chain's (export_ctm would rerun alike)
    assert "Running stage 'export'" in r.stdout and "Running stage 'evaluate'" not in r.stdout
    assert "Running stage 'distill'" not in r.stdout and "quality gate: REJECTED" in r.stdout
    diff = json.loads(_sh([DVC, "params", "diff", "--json"], repo, env).stdout)
    assert {k: diff["params.yaml"]["gate.excess_fid_ratio_max"][k] for k in ("old", "new")} == {"old": 5.0, "new": 3.5}


def test_the_guided_chain_runs_the_commands_dvc_yaml_gives(dvc_repo, monkeypatch, one_thread):
    """dvc.yaml's guided chain (params_guided.yaml), as DVC reads it: the guided stage, one halve stage per
    halving (a foreach), the evaluate and export stages, in a chain; each stage's command (interpolated by DVC)
    then runs in-process - the stage CLI `dvc repro` would launch, without a process start per stage (test time)."""
    import shlex

    import networkx as nx
    from dvc.repo import Repo

    from components import stages

    repo, env, _, metrics = dvc_repo
    chain = ["distill_guided", "halve@1", "halve@2", "evaluate_guided", "export_guided"]
    with Repo(str(repo)) as dvc:
        by_name = {s.name: s for s in dvc.index.stages if hasattr(s, "name")}   # data.dvc: a stage without one
        commands = [by_name[n].cmd for n in chain]
        graph = dvc.index.graph                          # edges: stage -> the stages whose outputs it reads
        for later, earlier in zip(chain[1:], chain):
            assert nx.has_path(graph, by_name[later], by_name[earlier]), (later, earlier)
    assert "--halving 2 " in commands[2] and "--teacher artifacts/guided/student_1" in commands[2]
    monkeypatch.chdir(repo)
    for command in commands:
        assert stages.main(shlex.split(command)[3:]) == 0, command
    guided = json.loads((repo / "metrics_guided.json").read_text())
    assert guided["teacher_fid"] == metrics["teacher_fid"] and guided["student_nfe"] == 2
    steps = {k: len(json.loads((repo / "artifacts" / "guided" / f"student_{k}" / "denoiser.json").read_text())
                    ["sampling"]["sigmas"]) - 1 for k in range(3)}
    assert steps == {0: 8, 1: 4, 2: 2}                                 # params_guided.yaml here: 8 -> 4 -> 2
    sweep = json.loads((repo / "artifacts" / "guided" / "eval" / "guidance_sweep.json").read_text())
    assert {p["model"] for p in sweep} == {"teacher (CFG)", "student, 8-step", "student, 4-step", "student, 2-step"}
    report = (repo / "artifacts" / "guided" / "report" / "run_report.html").read_text()
    assert "FID and class accuracy vs guidance w" in report
    # a halve stage that does not match the chain is one line, nothing written
    bad = shlex.split(commands[2].replace("--halving 2", "--halving 3").replace("student_2", "student_x"))[3:]
    assert stages.main(bad) == 1 and not (repo / "artifacts" / "guided" / "student_x").exists()


def test_the_msd_fan_out_runs_the_commands_dvc_yaml_gives(dvc_repo, monkeypatch, one_thread):
    """dvc.yaml's MSD stages (params_msd.yaml), as DVC reads them: a foreach stage of 4 independent branches, the
    join (route_msd) on all four, then evaluate and export; each command runs in-process (as the guided chain's)."""
    import shlex

    import networkx as nx
    from dvc.repo import Repo

    from components import stages
    from components.diffusion import RoutedDenoiser, load_denoiser

    repo, env, _, metrics = dvc_repo
    fan = [f"distill_msd@{k}" for k in range(4)]
    chain = [*fan, "route_msd", "evaluate_msd", "export_msd"]
    with Repo(str(repo)) as dvc:
        by_name = {s.name: s for s in dvc.index.stages if hasattr(s, "name")}   # data.dvc: a stage without one
        commands = [by_name[n].cmd for n in chain]
        graph = dvc.index.graph
        for a in fan:
            assert nx.has_path(graph, by_name["route_msd"], by_name[a])
            assert not any(nx.has_path(graph, by_name[a], by_name[b]) for b in fan if b != a)   # independent
        assert nx.has_path(graph, by_name["export_msd"], by_name["route_msd"])
    assert "--subset 2 " in commands[2]
    monkeypatch.chdir(repo)
    for command in commands:
        assert stages.main(shlex.split(command)[3:]) == 0, command
    routed = load_denoiser(repo / "artifacts" / "msd" / "student")
    assert isinstance(routed, RoutedDenoiser) and len(routed.students) == 4
    assert sorted(c for s in routed.subsets for c in s) == list(range(10))
    got = json.loads((repo / "metrics_msd.json").read_text())
    assert got["teacher_fid"] == metrics["teacher_fid"] and got["student_nfe"] == 1
    assert (repo / "models" / "msd_student").is_dir()
    # a subset outside the fan-out is one line, nothing written
    bad = shlex.split(commands[0].replace("--subset 0", "--subset 4").replace("student_0", "student_x"))[3:]
    assert stages.main(bad) == 1 and not (repo / "artifacts" / "msd" / "student_x").exists()


def test_data_stage_refuses_bad_data_and_writes_nothing(tmp_path, capsys):
    """The stage CLI's entry point (what `python -m components.stages data` runs), in this process."""
    from components import stages

    write_image_folder(tmp_path / "imgs", classes=("a", "b"), mode="L")
    (tmp_path / "imgs" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "imgs"), "min_per_class": 5}}))
    rc = stages.main(["data", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every image readable" in err[0] and "bad.png" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "params.yaml"]          # nothing written


def test_the_teacher_is_scored_once_and_only_its_own_figures_are_used(dvc_repo, tmp_path, capsys):
    """teacher_eval scores the teacher once for both chains (evaluate and evaluate_ctm read it); figures made
    under another evaluation section are refused, naming the file and what differs, and nothing is written."""
    from components import stages

    repo, _, first, _ = dvc_repo
    assert first.count("Running stage 'teacher_eval'") == 1
    assert (repo / "artifacts" / "teacher_eval" / "teacher_protocol.json").is_file()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluation"]["seed"] = 7                                       # no run of this file used seed 7
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    art = repo / "artifacts"
    argv = ["evaluate", "--params", str(tmp_path / "params.yaml"), "--dataset", str(art / "dataset"),
            "--features", str(art / "feature_net"), "--teacher", str(art / "teacher"),
            "--student", str(art / "ctm" / "student"), "--metrics", str(tmp_path / "m.json"),
            "--out", str(tmp_path / "eval"), "--plots", str(tmp_path / "p.csv")]
    assert stages.main(argv) == 2
    assert "needs --teacher-eval" in capsys.readouterr().err
    assert stages.main(argv + ["--teacher-eval", str(art / "teacher_eval")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher_protocol.json" in err[0] and "another evaluation " in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]          # nothing written


# on the worker that makes the session's ZenML runs (their group), so the DVC group's worker never waits for them
@pytest.mark.xdist_group("zenml_store")
def test_dvc_and_zenml_give_the_same_figures(dvc_repo, pipeline_runs):
    """Same components, same parameter values (tiny.yaml over params.yaml; the gate differs and changes
    no figure), same data bytes, same seeds -> the same numbers as the shared ZenML run."""
    dvc_metrics = dvc_repo[3]                                  # the first repro's: evaluation seed 0
    zenml_metrics = pipeline_runs["reject"]["info"]["metrics"]
    assert {k: zenml_metrics[k] for k in DETERMINISTIC} == {k: dvc_metrics[k] for k in DETERMINISTIC}


def test_the_lowdiff_chain_runs_the_commands_dvc_yaml_gives(dvc_repo, monkeypatch, one_thread):
    """dvc.yaml's LowDiff stages (params_lowdiff.yaml), as DVC reads them: distill -> evaluate -> export on the shared
    data, feature net and teacher stages (no pairs), then DMD2 on the trained cascade (distill --cascade) ->
    evaluate -> export; each command runs in-process (as the guided chain's)."""
    import shlex

    import networkx as nx
    from dvc.repo import Repo

    from components import stages
    from components.diffusion import CascadeDenoiser, load_denoiser

    repo, env, _, metrics = dvc_repo
    chain = ["distill_lowdiff", "evaluate_lowdiff", "export_lowdiff"]
    distilled = ["distill_lowdiff_dmd2", "evaluate_lowdiff_dmd2", "export_lowdiff_dmd2"]
    with Repo(str(repo)) as dvc:
        by_name = {s.name: s for s in dvc.index.stages if hasattr(s, "name")}   # data.dvc: a stage without one
        commands = [by_name[n].cmd for n in chain + distilled]
        graph = dvc.index.graph
        for later, earlier in [*zip(chain[1:], chain), ("distill_lowdiff_dmd2", "distill_lowdiff"),
                               *zip(distilled[1:], distilled)]:
            assert nx.has_path(graph, by_name[later], by_name[earlier]), (later, earlier)
        assert not nx.has_path(graph, by_name["distill_lowdiff"], by_name["pairs"])      # trained from the data
    monkeypatch.chdir(repo)
    for command in commands:
        assert stages.main(shlex.split(command)[3:]) == 0, command
    cascade = load_denoiser(repo / "artifacts" / "lowdiff" / "student")
    assert isinstance(cascade, CascadeDenoiser) and cascade.resolutions == [4, 8]
    got = json.loads((repo / "metrics_lowdiff.json").read_text())
    assert got["teacher_fid"] == metrics["teacher_fid"] and got["student_nfe"] == 3 + 3
    # params.yaml's gate (class accuracy >= 0.9) rejects a cascade trained for 4 iterations: nothing deployable
    # is written (the exported folder itself: tests/components/test_lowdiff.py)
    assert "class accuracy floor" in (repo / "models" / "lowdiff_student" / "REJECTED.md").read_text()
    assert (repo / "artifacts" / "lowdiff" / "report" / "run_report.html").is_file()
    distilled = load_denoiser(repo / "artifacts" / "lowdiff_dmd2" / "student")
    assert isinstance(distilled, CascadeDenoiser) and [lv["steps"] for lv in distilled.sampling["levels"]] == [1, 1]
    assert json.loads((repo / "metrics_lowdiff_dmd2.json").read_text())["student_nfe"] == 1 + 1
    assert (repo / "artifacts" / "lowdiff_dmd2" / "report" / "run_report.html").is_file()
