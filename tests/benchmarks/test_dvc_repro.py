"""benchmarks/dvc_repro.py: which outputs it copies back, how it compares a fresh clone's repro with the committed
one, and its refusals (the repro itself: tests/pipelines/test_dvc.py runs dvc repro on a tiny config)."""
import json

import pytest
import yaml

from benchmarks import dvc_repro


def test_git_outputs_are_the_metrics_and_plots_of_every_chain_foreach_items_included():
    outs = dvc_repro.git_outputs()
    assert {name for _, name in dvc_repro.CHAINS} <= set(outs)
    assert {"plots/teacher_loss.csv", "plots/msd/distill_losses_0.csv", "plots/msd/distill_losses_3.csv",
            "plots/guided/distill_losses_1.csv", "plots/guided/distill_losses_2.csv"} <= set(outs)
    assert not [p for p in outs if "${" in p or p.startswith(("artifacts/", "models/"))]    # cached outputs stay out


def _lock(path, outs):
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"s": {"outs": [{"path": p, "md5": m}
                                                                              for p, m in outs.items()]}}}))


def test_compare_tells_timed_outputs_and_wall_clock_figures_from_real_differences(tmp_path, monkeypatch):
    root, clone = tmp_path / "root", tmp_path / "clone"
    root.mkdir()
    clone.mkdir()
    monkeypatch.setattr(dvc_repro, "ROOT", root)
    committed = {"artifacts/student": "a", "artifacts/pairs": "b", "artifacts/eval": "c", "models/dmd2_student": "d",
                 "metrics.json": "e"}
    _lock(root / "dvc.lock", committed)
    (root / "metrics.json").write_text(json.dumps({"student_fid": 24.0, "student_latency_p50_ms": 3.0}))
    _lock(clone / "dvc.lock", {**committed, "artifacts/eval": "x", "models/dmd2_student": "y", "metrics.json": "z"})
    (clone / "metrics.json").write_text(json.dumps({"student_fid": 24.0, "student_latency_p50_ms": 9.0}))
    chains = (("export", "metrics.json"),)
    same = dvc_repro.compare(clone, chains)
    assert same["outs_differing"] == ["artifacts/eval", "metrics.json", "models/dmd2_student"]
    assert same["outs_differing_unexpectedly"] == [] and same["figures_differing"] == {}
    _lock(clone / "dvc.lock", {**committed, "artifacts/pairs": "other"})
    (clone / "metrics.json").write_text(json.dumps({"student_fid": 25.0, "student_latency_p50_ms": 3.0}))
    bad = dvc_repro.compare(clone, chains)
    assert bad["outs_differing_unexpectedly"] == ["artifacts/pairs"]
    assert bad["figures_differing"] == {"metrics.json": {"student_fid": [24.0, 25.0]}}


@pytest.mark.parametrize("args, message", [(["--chains", "export,nope"], "--chains: unknown target 'nope'"),
                                           (["--chains", "export", "--write"], "--write needs every chain")])
def test_bad_arguments_are_one_line_before_anything_runs(args, message):
    with pytest.raises(SystemExit, match=message):
        dvc_repro.main(args)
