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


def test_nested_metrics_compare_per_model_and_wall_clock_stays_out(tmp_path, monkeypatch):
    """metrics_t2i.json nests per model: a student FID that differs is named by its path, sampling seconds are not."""
    root, clone = tmp_path / "root", tmp_path / "clone"
    root.mkdir()
    clone.mkdir()
    monkeypatch.setattr(dvc_repro, "ROOT", root)
    for d in (root, clone):
        _lock(d / "dvc.lock", {})
    (root / "metrics_t2i.json").write_text(json.dumps({"student": {"fid": 6.0, "sampling_seconds": 1.0}}))
    (clone / "metrics_t2i.json").write_text(json.dumps({"student": {"fid": 6.5, "sampling_seconds": 2.0}}))
    assert dvc_repro.fids({"student": {"fid": 6.0}, "teacher": {"fid": 3.0}}) == (6.0, 3.0)
    out = dvc_repro.compare(clone, (("export_t2i", "metrics_t2i.json"),))
    assert out["figures_differing"] == {"metrics_t2i.json": {"student.fid": [6.0, 6.5]}}


def test_one_chain_written_alone_replaces_its_row_and_keeps_the_others_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(dvc_repro, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    old = {"provenance": {"commit": "aaa", "started_utc": "day 1", "machine": "m"}, "threads": 2,
           "last_repro": "up to date",
           "total_seconds": 30.0,
           "chains": [{"target": "export", "seconds": 10.0, "stages": ["data"], "gate": "PASSED", "student_fid": 2.0,
                       "teacher_fid": 1.0},
                      {"target": "export_t2i", "seconds": 20.0, "stages": ["x"], "gate": "REJECTED",
                       "student_fid": 9.0, "teacher_fid": 3.0}]}
    (tmp_path / "docs" / "dvc-repro.json").write_text(json.dumps(old))
    new_row = {"target": "export_t2i", "seconds": 60.0, "stages": ["captions_t2i"], "gate": "PASSED",
               "student_fid": 6.0, "teacher_fid": 3.0, "commit": "bbb", "measured_utc": "day 2"}
    merged = dvc_repro.merge_rows({"provenance": {"commit": "bbb", "started_utc": "day 2"}, "chains": [new_row],
                                   "stale_elsewhere": ["teacher"]})
    assert [c["target"] for c in merged["chains"]] == ["export", "export_t2i"]
    assert merged["chains"][0]["commit"] == "aaa" and merged["chains"][1] == new_row
    assert merged["total_seconds"] == 70.0 and merged["provenance"]["commit"] == "aaa"
    page = dvc_repro.render(merged)
    assert "measured alone (`--chains`) on day 2 at commit `bbb`" in page and "`teacher`" in page
    assert "| `dvc repro export_t2i` | 1.0 | captions_t2i | 6.00 (teacher 3.00) | PASSED |" in page


def test_bad_arguments_are_one_line_before_anything_runs():
    with pytest.raises(SystemExit, match="--chains: unknown target 'nope'"):
        dvc_repro.main(["--chains", "export,nope"])
