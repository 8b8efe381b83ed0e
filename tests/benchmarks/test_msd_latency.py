"""benchmarks/msd_latency.py: the interleaved batch-1 latency of routed MSD bundles against the single student."""
import json

import pytest

from benchmarks import msd_latency


def test_bundles_measured_beside_the_single_student(tmp_path, capsys):
    out = tmp_path / "lat.json"
    r = msd_latency.main(["--dataset", "digits", "--student-channels", "24,48", "16", "--students", "2",
                          "--rounds", "2", "--repeats", "2", "--out", str(out),
                          "--markdown", str(tmp_path / "lat.md")])
    assert json.loads(out.read_text()) == r == json.loads(capsys.readouterr().out)
    single, *bundles = r["models"]
    assert single == "single (32, 64)" and bundles == ["2 routed (24, 48)", "2 routed (16,)"]
    m = r["models"]
    assert m[single]["ratio_to_single_median"] == 1.0
    assert m[single]["parameters_per_image"] == 635681                     # the digits teacher's UNet
    assert m[bundles[0]]["parameters_per_image"] < m[single]["parameters_per_image"]   # one student, not the bundle
    for name in m:
        assert len(m[name]["p50_ms_per_round"]) == 2 and all(v > 0 for v in m[name]["p50_ms_per_round"])
    assert r["provenance"]["commit"] and r["provenance"]["finished_utc"]
    md = (tmp_path / "lat.md").read_text()
    assert "| 2 routed (24, 48) |" in md and r["provenance"]["commit"] in md and "msd_latency.py --dataset digits" in md


def test_bad_student_channels_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        msd_latency.main(["--student-channels", "24,x"])
    assert exc.value.code != 0 and "--student-channels" in capsys.readouterr().err
