"""benchmarks/t2i.py's bookkeeping: which earlier rows a partial run keeps (and under which name), and which rows
each target compares (the benchmark itself runs for an hour: its figures are in docs/results.md)."""
import json

import pytest

from benchmarks import t2i


def _row(variant, iterations=None, fid=10.0):
    r = {"name": variant, "fid": fid, "seeds": []}
    if iterations is not None:
        r.update(variant=variant, iterations=iterations)
    return r


@pytest.fixture
def previous(tmp_path, monkeypatch):
    """A t2i.json of an earlier run at 600 iterations (rows without the iterations key, as the first runs wrote)."""
    monkeypatch.setattr(t2i, "OUT", tmp_path)
    prev = {"provenance": {"commit": "aaa", "started_utc": "day 1"}, "config": {"distill": {"iterations": 600}},
            "rows": [_row("DMD2 1-step", fid=12.0), _row("DMD2 4-step", fid=7.0),
                     _row("DMD2 1-step, LoRA r8", fid=13.0)]}
    (tmp_path / "t2i.json").write_text(json.dumps(prev))
    return prev


def test_kept_rows_are_named_by_their_iterations_and_carry_their_commit(previous):
    new = [_row("DMD2 1-step", 2400, fid=6.0)]
    kept = t2i.kept_rows(new, 2400)
    assert [r["name"] for r in kept] == ["DMD2 1-step, 600 iterations", "DMD2 4-step, 600 iterations",
                                         "DMD2 1-step, LoRA r8, 600 iterations"]
    assert all(r["kept_from"] == {"commit": "aaa", "measured_utc": "day 1"} and r["iterations"] == 600 for r in kept)
    # the same variant at the same iterations is replaced, not kept
    assert [r["variant"] for r in t2i.kept_rows([_row("DMD2 4-step", 600)], 600)] == ["DMD2 1-step",
                                                                                       "DMD2 1-step, LoRA r8"]


def test_targets_compare_rows_trained_as_long(previous):
    rows = [_row("DMD2 1-step", 2400, fid=6.0)] + t2i.kept_rows([_row("DMD2 1-step", 2400, fid=6.0)], 2400)
    result = {"config": {"distill": {"iterations": 2400}}, "rows": rows, "route_from_nothing_seconds": 1800.0,
              "teacher": {"fid": 3.0}, "real": {"fid": 1.0}}
    got = {t["target"]: t["value"] for t in t2i.targets(result)}
    assert got["1-step FID <= 1.3x teacher"] == pytest.approx(2.0)                 # the 2400-iteration row
    assert got["LoRA FID <= 1.3x full (600 iterations)"] == pytest.approx(13.0 / 12.0)   # LoRA vs full at 600


def test_reuse_and_keep_rows_need_a_finished_run(tmp_path, monkeypatch):
    monkeypatch.setattr(t2i, "OUT", tmp_path)
    with pytest.raises(SystemExit):
        t2i.parse_args(["--reuse"])
    with pytest.raises(SystemExit, match="t2i.json is missing"):
        t2i.kept_rows([], 600)
