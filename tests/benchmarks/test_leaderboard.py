"""benchmarks/leaderboard.py on a tiny spec: the protocol it promises (one sample count everywhere, training
seeds, the row scored at distill.iterations while the curve goes on), the files it writes, bad input."""
import json

import pytest
import torch
import yaml

from benchmarks import leaderboard as lb
from tests.conftest import TINY_TEACHER

TINY = {"teacher": {**TINY_TEACHER, "block_out_channels": [16, 32]}, "features": {"dim": 16, "train_steps": 30},
        "distill": {"iterations": 4, "batch_size": 8, "log_every": 2, "fid_every": 2, "dfake_gen_update_ratio": 2},
        "evaluation": {"num_samples": 60, "batch_size": 60, "teacher_nfe_steps": [2], "latency_repeats": 2},
        "compute": {"threads": 1}}


@pytest.fixture(scope="module")
def board(tmp_path_factory, digits_npz):
    tmp = tmp_path_factory.mktemp("leaderboard")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump({"parameters": {"params_file": "params.yaml", "data": {"path": digits_npz},
                                                     **TINY}}))
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "datasets": {"tiny": {"config": str(config)}}, "train_seeds": [0, 1], "sample_seeds": [0, 1],
        "rows": [{"name": "one step", "distill": {"denoising_timesteps": [999]}},
                 {"name": "two steps", "distill": {"denoising_timesteps": [999, 499]}}]}))
    args = ["--spec", str(spec), "--cache", str(tmp / "cache"), "--results", str(tmp / "results"),
            "--write-docs", str(tmp / "results.md"), "--long", "2"]
    result = lb.main(args)[0]
    return tmp, spec, args, result


def test_every_figure_uses_one_sample_count_and_the_seeds(board):
    _, _, _, r = board
    p = r["protocol"]
    assert p["num_samples"] == 60 and "60 of" in p["real_floor"] and p["torch_threads"] == 1
    assert [t["nfe"] for t in r["teacher"]] == [5, 3] and r["teacher"][0]["default"]
    for row in r["rows"]:
        assert [s["seed"] for s in row["per_seed"]] == [0, 1]
        assert all(len(s["fid_per_sample_seed"]) == 2 for s in row["per_seed"])
        # two training seeds are two different students
        assert row["per_seed"][0]["fid"] != row["per_seed"][1]["fid"] and row["fid_std_train"] > 0
        assert row["fid"] == pytest.approx(sum(s["fid"] for s in row["per_seed"]) / 2)
        assert row["excess_fid"] == pytest.approx(row["fid"] - p["real_floor_fid"])
        # scored at distill.iterations (4); the curve goes on to --long 2 x 4
        assert row["iterations"] == 4 and [c["iteration"] for c in row["curve"]] == [2, 4, 6, 8]
    assert [row["nfe"] for row in r["rows"]] == [1, 2]


def test_the_row_is_the_student_at_the_default_length(board, one_thread):
    """No schedule depends on distill.iterations: the student kept at 4 of 8 iterations is the one a
    4-iteration run returns (what makes one long run serve the row and the convergence curve)."""
    tmp, spec, _, _ = board
    s = lb.load_spec(str(spec), None, "one step", 1)
    cfg = lb.run_config(s["datasets"]["tiny"]["config"])
    paths = lb.shared_artifacts(cfg, tmp / "cache", need_pairs=False)
    assert sorted(paths) == ["dataset", "feature_net", "teacher"]
    ctx = lb.Context("tiny", "tiny", cfg, paths, [0])
    short, _, _ = lb.distill_one(ctx, s["rows"][0], 0, 1.0)
    long, curve, _ = lb.distill_one(ctx, s["rows"][0], 0, 2.0)
    assert [i for i, _ in curve] == [2, 4, 6, 8]
    for a, b in zip(short.parameters(), long.parameters()):
        assert torch.equal(a, b)


def test_docs_json_and_pictures_and_rerender(board):
    tmp, _, _, r = board
    saved = json.loads((tmp / "results" / "tiny.json").read_text())
    assert saved["rows"][0]["name"] == "one step"
    for picture in saved["pictures"].values():
        assert (tmp / "results" / picture).stat().st_size > 1000
    page = (tmp / "results.md").read_text()
    assert "| one step | 1 |" in page and "| two steps | 2 |" in page and saved["provenance"]["commit"][:12] in page
    (tmp / "results.md").unlink()
    lb.main(["--from-json", "--results", str(tmp / "results"), "--write-docs", str(tmp / "results.md")])
    assert (tmp / "results.md").read_text() == page


@pytest.mark.parametrize("change, message", [
    ({"rows": [{"name": "x"}, {"name": "x"}]}, "unique names"),
    ({"train_seeds": []}, "train_seeds must be a non-empty list"),
    ({"datasets": {"tiny": {}}}, "datasets.tiny needs config"),
])
def test_a_bad_spec_is_one_line_and_exit_2(board, tmp_path, capsys, change, message):
    _, spec, _, _ = board
    bad = {**yaml.safe_load(spec.read_text()), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit) as exc:
        lb.main(["--spec", str(path), "--cache", str(tmp_path / "c"), "--results", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()     # nothing written


def test_row_names_may_hold_commas():
    known = ["DMD2 4-step", "DMD2 4-step, SNR-spaced", "DMD2 1-step"]
    assert lb.pick_names("DMD2 4-step, SNR-spaced", known) == (["DMD2 4-step, SNR-spaced"], [])
    assert lb.pick_names("DMD2 1-step,DMD2 4-step, SNR-spaced,DMD2 4-step", known) == (
        ["DMD2 1-step", "DMD2 4-step, SNR-spaced", "DMD2 4-step"], [])
    assert lb.pick_names("DMD2 4-step, spaced", known) == (["DMD2 4-step"], ["spaced"])


def test_unknown_rows_and_missing_files_are_named(board, tmp_path, capsys):
    _, spec, _, _ = board
    for argv, message in ((["--spec", str(spec), "--rows", "three steps"], "--rows: unknown ['three steps']"),
                          (["--spec", str(tmp_path / "absent.yaml")], "absent.yaml': no such file"),
                          (["--from-json", "--results", str(tmp_path / "none")], "no <dataset>.json")):
        with pytest.raises(SystemExit) as exc:
            lb.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_student_seeds_are_cached_and_a_changed_config_is_a_miss(board, capsys):
    """A rerun reads every student seed from the cache (same figures); a shorter --long is served by the
    longer run's entry; a row whose distill config changed is distilled again."""
    tmp, spec, _, r = board
    capsys.readouterr()
    again = lb.main(["--spec", str(spec), "--cache", str(tmp / "cache"), "--long", "1"])[0]
    err = capsys.readouterr().err
    assert err.count("cached") == 4
    for a, b in zip(r["rows"], again["rows"]):
        assert a["fid"] == b["fid"] and a["per_seed"] == b["per_seed"]
        # the longer run's whole curve is served, every point from both seeds
        assert [(c["iteration"], c["seeds"]) for c in b["curve"]] == [(2, 2), (4, 2), (6, 2), (8, 2)]
        assert b["long"] == 2
    changed = yaml.safe_load(spec.read_text())
    changed["rows"][0]["distill"]["lr_gen"] = 1e-3
    spec2 = tmp / "spec2.yaml"
    spec2.write_text(yaml.safe_dump(changed))
    other = lb.main(["--spec", str(spec2), "--cache", str(tmp / "cache"), "--rows", "one step",
                     "--train-seeds", "1", "--long", "1"])[0]
    assert "cached" not in capsys.readouterr().err
    assert other["rows"][0]["per_seed"][0]["fid"] != r["rows"][0]["per_seed"][0]["fid"]


def test_a_renamed_row_keeps_its_cached_students(board, tmp_path, capsys):
    """The cache key is what the row changes (its distill overrides), not its name; an entry written under
    the old name key is moved to the new key (with a sweep's saved student) instead of distilled again."""
    tmp, spec, _, r = board
    s = yaml.safe_load(spec.read_text())
    s["rows"][1]["name"] = "two steps, renamed"
    path = tmp_path / "renamed.yaml"
    path.write_text(yaml.safe_dump(s))
    capsys.readouterr()
    again = lb.main(["--spec", str(path), "--cache", str(tmp / "cache"), "--rows", "two steps, renamed",
                     "--long", "1"])[0]
    assert capsys.readouterr().err.count("cached") == 2
    assert again["rows"][0]["name"] == "two steps, renamed" and again["rows"][0]["per_seed"] == r["rows"][1]["per_seed"]

    named, new = tmp_path / "old.json", tmp_path / "new.json"
    named.write_text("{}")
    (tmp_path / "old").mkdir()
    lb._adopt_named_entry(new, "old")
    assert new.is_file() and (tmp_path / "new").is_dir() and not named.exists() and not (tmp_path / "old").exists()
    named.write_text('{"stale": 1}')
    lb._adopt_named_entry(new, "old")                  # an entry under the new key wins; the old one stays
    assert new.read_text() == "{}" and named.is_file()


def test_a_seed_that_ran_shorter_is_counted_in_the_curve(board, capsys):
    """Seed 0 cached to 2x, seed 1 distilled again to 1x: the curve past 1x names its one seed, and the
    convergence picture labels that tail as a series of its own."""
    import shutil

    tmp, spec, _, _ = board
    cache = tmp / "cache-mixed"                        # the shared data, feature net and teacher; no students
    shutil.copytree(tmp / "cache", cache, ignore=shutil.ignore_patterns("students"))
    base = ["--spec", str(spec), "--cache", str(cache), "--rows", "one step"]
    lb.main(base + ["--train-seeds", "1", "--long", "2"])
    capsys.readouterr()
    r = lb.main(base + ["--long", "1"])[0]
    assert capsys.readouterr().err.count("cached") == 1
    (row,) = r["rows"]
    assert [(c["iteration"], c["seeds"]) for c in row["curve"]] == [(2, 2), (4, 2), (6, 1), (8, 1)]
    assert row["curve"][2]["fid_std"] == 0 and row["long"] == 2
    drawn = {}
    import components.viz as viz

    real = viz.fid_over_training
    try:
        viz.fid_over_training = lambda curves, *a, **k: drawn.update(curves) or real(curves, *a, **k)
        r["pictures"] = {"fid_vs_nfe": "a.png", "convergence": "b.png"}
        lb.pictures(r, tmp)
    finally:
        viz.fid_over_training = real
    assert [i for i, *_ in drawn["one step"]] == [2, 4]
    assert [i for i, *_ in drawn["one step (1 of 2 seeds)"]] == [6, 8]


def test_the_convergence_picture_draws_every_row_and_one_curve_per_sweep(tmp_path):
    """Plain rows each get a curve; the rows of one sweep share one (its training); titles name the dataset."""
    import components.viz as viz

    def row(name, **extra):
        return {"name": name, "nfe": 1, "fid": 5.0, "fid_std_train": 0.1, "train_seeds": [0],
                "curve": [{"iteration": 2, "fid": 6.0, "fid_std": 0.0, "seeds": 1}], **extra}

    sweep = dict(train_as="ctm")
    result = {"dataset": "tiny", "pictures": {"fid_vs_nfe": "a.png", "convergence": "b.png"},
              "teacher": [{"nfe": 5, "fid": 4.0, "default": True}], "protocol": {"real_floor_fid": 1.0},
              "rows": [row("one step"), row("two steps"), row("ctm 1-step", sampling={"steps": 1, "gamma": 0.0}, **sweep),
                       row("ctm 2-step, gamma 1", sampling={"steps": 2, "gamma": 1.0}, **sweep)]}
    drawn, titles = {}, []
    real_conv, real_nfe = viz.fid_over_training, viz.fid_vs_nfe
    try:
        viz.fid_over_training = lambda curves, t, f, title: drawn.update(curves) or titles.append(title) or \
            real_conv(curves, t, f, title)
        viz.fid_vs_nfe = lambda points, title: titles.append(title) or real_nfe(points, title)
        lb.pictures(result, tmp_path)
    finally:
        viz.fid_over_training, viz.fid_vs_nfe = real_conv, real_nfe
    assert sorted(drawn) == ["ctm (training)", "one step", "two steps"]
    assert titles == ["tiny: FID vs NFE", "tiny: FID during distillation"]


def test_write_docs_keeps_the_rows_it_did_not_run(board):
    """--write-docs with --rows measures those rows and keeps the dataset's other rows from its JSON (same
    protocol), in the spec's order; the table says how many training seeds each row has."""
    tmp, spec, _, r = board
    out = tmp / "merge"
    (out / "results").mkdir(parents=True)
    (out / "results" / "tiny.json").write_text((tmp / "results" / "tiny.json").read_text())
    lb.main(["--spec", str(spec), "--cache", str(tmp / "cache"), "--rows", "two steps", "--train-seeds", "1",
             "--results", str(out / "results"), "--write-docs", str(out / "results.md")])
    saved = json.loads((out / "results" / "tiny.json").read_text())
    assert [row["name"] for row in saved["rows"]] == ["one step", "two steps"]
    one, two = saved["rows"]
    assert one["per_seed"] == r["rows"][0]["per_seed"] and len(one["train_seeds"]) == 2    # kept as it was
    assert two["train_seeds"] == [0] and "measured" in two
    page = (out / "results.md").read_text()
    assert "| one step | 1 | " in page and "| two steps | 2 | " in page
    assert page.split("| one step | 1 | ")[1].split(" | ")[1] == "2"             # its 2 training seeds
    assert page.split("| two steps | 2 | ")[1].split(" | ")[1] == "1"
    # another protocol (here: a different sample count) is not merged
    other = json.loads((out / "results" / "tiny.json").read_text())
    other["protocol"]["num_samples"] = 7
    assert [x["name"] for x in lb.merge_previous(saved | {"rows": [two]}, other, ["one step", "two steps"])["rows"]] \
        == ["two steps"]


def test_a_teacher_retrained_elsewhere_merges_only_within_float_rounding(board):
    """The same recipe on another machine: the teacher's hash differs and the floor moves in its last digits. The
    rows stay one table when the floor and the default teacher's FID agree to ROUNDING; the kept rows name their
    teacher, and the page says so. A larger difference is another teacher: not merged."""
    tmp, _, _, r = board
    saved = json.loads((tmp / "results" / "tiny.json").read_text())
    new = json.loads(json.dumps(saved))
    new["rows"] = [row for row in new["rows"] if row["name"] == "two steps"]
    new["protocol"]["teacher_sha256"] = "f" * 64
    new["protocol"]["real_floor_fid"] *= 1 + 5e-6
    new["teacher"][0]["fid"] *= 1 + 5e-4
    merged = lb.merge_previous(new, saved, ["one step", "two steps"])
    assert [x["name"] for x in merged["rows"]] == ["one step", "two steps"]
    assert merged["rows"][0]["measured"]["teacher_sha256"] == saved["protocol"]["teacher_sha256"]
    assert "teacher_sha256" not in merged["rows"][1].get("measured", {})
    assert any("by float rounding" in line and "one step" in line for line in lb.earlier_rows(merged))
    for key, factor in (("teacher", 1 + 5e-3), ("floor", 1 + 1e-3)):
        far = json.loads(json.dumps(new))
        if key == "teacher":
            far["teacher"][0]["fid"] = saved["teacher"][0]["fid"] * factor
        else:
            far["protocol"]["real_floor_fid"] = saved["protocol"]["real_floor_fid"] * factor
        assert [x["name"] for x in lb.merge_previous(far, saved, ["one step", "two steps"])["rows"]] == ["two steps"]


def test_a_sweep_row_trains_once_per_seed_and_scores_each_recipe(board, tmp_path, capsys):
    """A CTM row with sweep {steps, gamma} expands to one row per recipe; each training seed is distilled
    once, its student saved, and a recipe added later is scored from the saved student (no retraining)."""
    tmp, spec, _, _ = board
    s = yaml.safe_load(spec.read_text())
    s["rows"] = [{"name": "ctm", "distill": {"method": "ctm"}, "sweep": {"steps": [1, 2], "gamma": [0.0, 1.0]}}]
    path = tmp_path / "ctm.yaml"
    path.write_text(yaml.safe_dump(s))
    assert [r["name"] for r in lb.load_spec(str(path), None, None, None)["rows"]] == [
        "ctm 1-step", "ctm 2-step, gamma 0", "ctm 2-step, gamma 1"]
    cache = ["--cache", str(tmp / "cache"), "--train-seeds", "1"]
    capsys.readouterr()
    r = lb.main(["--spec", str(path), "--rows", "ctm 1-step,ctm 2-step, gamma 0", *cache])[0]
    err = capsys.readouterr().err
    assert err.count("training seed 0") == 2 and err.count("cached student") == 1    # one distillation
    assert [row["nfe"] for row in r["rows"]] == [1, 2]
    assert r["rows"][0]["distill_seconds"] == r["rows"][1]["distill_seconds"]
    assert r["rows"][0]["fid"] != r["rows"][1]["fid"]
    # the third recipe, later: the saved student is scored; the two earlier rows come from the cache
    again = lb.main(["--spec", str(path), "--rows", "ctm", *cache])[0]
    err = capsys.readouterr().err
    assert "distill (ctm)" not in err and err.count("cached student") == 1 and err.count("cached (") == 2
    assert [row["fid"] for row in again["rows"][:2]] == [row["fid"] for row in r["rows"]]
    assert again["rows"][2]["nfe"] == 2 and again["rows"][2]["fid"] != again["rows"][1]["fid"]
    bad = {**s, "rows": [{"name": "ctm", "distill": {"method": "ctm"}, "sweep": {"steps": [0]}}]}
    path.write_text(yaml.safe_dump(bad))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        lb.load_spec(str(path), None, None, None)
    assert "row 'ctm': sweep needs steps" in capsys.readouterr().err


def test_a_guided_chain_trains_once_per_seed_and_is_scored_per_stage_and_w(board, tmp_path, capsys):
    """A guided row with sweep {w, steps} expands to one row per scored stage and w; each training seed trains
    the whole chain once (its students saved); the CFG teacher is scored at each w (two evaluations per step
    where w > 0); the page gets the guidance table and picture, and the main table only the first w."""
    tmp, spec, _, _ = board
    s = yaml.safe_load(spec.read_text())
    chain = {"method": "guided", "iterations": 2, "sampling_steps": 8, "target_steps": 1, "halving": {"iterations": 2}}
    # per_dataset: on "tiny" the chain starts at 4 steps (the stages trained below: 4, 2, 1 - not 8)
    s["rows"] = [{"name": "guided", "distill": chain, "sweep": {"w": [0.0, 1.0], "steps": [2, 1]},
                  "per_dataset": {"tiny": {"distill": {"sampling_steps": 4}}}}]
    path = tmp_path / "guided.yaml"
    path.write_text(yaml.safe_dump(s))
    assert [r["name"] for r in lb.load_spec(str(path), None, None, None)["rows"]] == [
        "guided 2-step, w 0", "guided 2-step, w 1", "guided 1-step, w 0", "guided 1-step, w 1"]
    capsys.readouterr()
    out = tmp_path / "results"
    r = lb.main(["--spec", str(path), "--cache", str(tmp / "cache"), "--train-seeds", "1", "--results", str(out),
                 "--write-docs", str(tmp_path / "results.md")])[0]
    err = capsys.readouterr().err
    assert err.count("training seed 0") == 4 and err.count("cached student") == 3    # one chain trained
    lb.main(["--spec", str(path), "--cache", str(tmp / "cache"), "--train-seeds", "1", "--results", str(out),
             "--fresh"])
    again = capsys.readouterr().err                                   # --fresh: the chain trained again, once
    assert sum(line.endswith("training seed 0") for line in again.splitlines()) == 1
    assert again.count("cached student") == 3
    assert "distill (guided)" in err and "distill (progressive)" in err
    assert [(row["sampling"]["steps"], row["sampling"]["w"], row["nfe"]) for row in r["rows"]] == [
        (2, 0.0, 2), (2, 1.0, 2), (1, 0.0, 1), (1, 1.0, 1)]                 # one evaluation per step at any w
    assert len({row["distill_seconds"] for row in r["rows"]}) == 1            # the whole chain's seconds
    upto = r["rows"][0]["chain_seconds"]                                      # seconds up to each stage
    assert sorted(upto) == ["1", "2", "4"] and upto["4"] < upto["2"] < upto["1"] <= r["rows"][0]["distill_seconds"]
    t = {row["w"]: row for row in r["teacher_guidance"]}
    assert t[1.0]["nfe"] == 2 * t[0.0]["nfe"] and t[0.0]["fid"] != t[1.0]["fid"]
    default = next(row for row in r["teacher"] if row["default"])      # w 0: the default teacher row, not resampled
    assert t[0.0]["fid_per_sample_seed"] == default["fid_per_sample_seed"] and "teacher (CFG, w 0)" not in err
    assert "teacher (CFG, w 1)" in err and "teacher (CFG, w 1)" not in again      # cached per w
    page = (tmp_path / "results.md").read_text()
    assert "guided: FID (class accuracy) by stage and guidance w" in page and "| teacher, CFG" in page
    assert "up to each stage: 4 steps " in page and ", 1 steps " in page
    dmd2 = {"name": "DMD2 1-step", "distill_seconds": 2 * upto["4"], "per_seed": [{"commit": "abcdef0123"}]}
    here = r["rows"][0]["per_seed"][0]["commit"][:7]                         # the commit each side trained at
    assert lb.chain_budget({"rows": [dmd2]}, r["rows"][0]).endswith(
        f"to 4 steps = 0.50 x DMD2 1-step's {2 * upto['4']:.0f} s (DMD2 1-step trained at abcdef0, this chain at "
        f"{here})")
    assert "| guided 2-step, w 0 |" in page and "| guided 2-step, w 1 |" not in page      # the main table: w 0
    assert (out / "tiny-fid-vs-w.png").is_file() and "tiny-fid-vs-w.png" in page
    assert r["rows"][0]["distill"]["sampling_steps"] == 4                      # the row as it ran on tiny
    for rows, message in (
            ([{"name": "guided", "distill": {**chain, "sampling_steps": 4}, "sweep": {"w": [0.0], "steps": [3]}}],
             "row 'guided': sweep steps [3] must be step counts of the chain [4, 2, 1]"),
            ([{"name": "guided", "distill": chain, "sweep": {"w": [0.0], "steps": [8]},
               "per_dataset": {"tiny": {"distill": {"sampling_steps": 4}}}}],
             "row 'guided' on tiny: sweep steps [8] must be step counts of the chain [4, 2, 1]"),
            ([{"name": "guided", "distill": chain, "per_dataset": {"fashion": {"distill": {}}}}],
             "row 'guided': per_dataset must map dataset names (tiny) to {distill: <overrides>}")):
        path.write_text(yaml.safe_dump({**s, "rows": rows}))
        capsys.readouterr()
        with pytest.raises(SystemExit):
            lb.load_spec(str(path), None, None, None)
        assert message in capsys.readouterr().err


def test_a_multi_student_row_trains_the_fan_out_and_reports_its_wall_clock(board, tmp_path, capsys):
    """An msd row: K students per training seed (each only on its subset), routed and scored as one model; the
    row's parameters are one student's, the fan-out table has the one-machine and longest-branch seconds."""
    tmp, spec, _, _ = board
    s = yaml.safe_load(spec.read_text())
    s["rows"] = [{"name": "msd", "distill": {"method": "msd", "students": 2, "iterations": 2,
                                              "student_channels": [8, 16], "tsm_iterations": 1, "dm_iterations": 1}}]
    path = tmp_path / "msd.yaml"
    path.write_text(yaml.safe_dump(s))
    capsys.readouterr()
    r = lb.main(["--spec", str(path), "--cache", str(tmp / "cache"), "--train-seeds", "1", "--results",
                 str(tmp_path / "results"), "--write-docs", str(tmp_path / "results.md")])[0]
    assert capsys.readouterr().err.count("tiny: msd, training seed 0") == 1
    (row,) = r["rows"]
    assert row["nfe"] == 1 and row["parameters_total"] == 2 * row["parameters"]
    assert "fan_out_seconds_longest_branch" in row and "fan_out_seconds_longest_branch" in row["per_seed"][0]
    page = (tmp_path / "results.md").read_text()
    assert "| msd | 2 | " in page and "longest branch s (parallel DAG)" in page


def test_lowdiff_rows_report_levels_budget_and_ratios_to_their_baseline(board, tmp_path, capsys):
    """A LowDiff cascade row and its one-level baseline (rows limited to their dataset by `datasets`): NFE per level
    and in full-resolution equivalents, the training budget in full-resolution-equivalent images, images/s at batch
    256, and the cascade table's ratios to the row named in `compare_to`."""
    tmp, spec, _, _ = board
    s = yaml.safe_load(spec.read_text())
    base = {"method": "lowdiff", "iterations": 4, "batch_size": 8, "log_every": 2, "fid_every": 4}
    s["rows"] = [{"name": "single", "distill": {**base, "resolutions": [8], "steps": [2], "start_sigma": []}},
                 {"name": "cascade", "compare_to": "single",
                  "distill": {**base, "resolutions": [4, 8], "steps": [2, 1], "start_sigma": [1.0]}},
                 {"name": "elsewhere", "datasets": ["other"], "distill": {"method": "nope"}}]   # not this dataset's
    # DMD2 on the cascade row's own cascade (its saved student), one evaluation per level
    s["rows"].insert(2, {"name": "distilled", "compare_to": "cascade",
                         "distill": {**s["rows"][1]["distill"], "cascade_dmd2": {"iterations": 2}}})
    path = tmp_path / "lowdiff.yaml"
    path.write_text(yaml.safe_dump(s))
    capsys.readouterr()
    r = lb.main(["--spec", str(path), "--cache", str(tmp / "cache"), "--train-seeds", "1", "--results",
                 str(tmp_path / "results"), "--write-docs", str(tmp_path / "results.md")])[0]
    single, cascade, distilled = r["rows"]
    assert [row["name"] for row in r["rows"]] == ["single", "cascade", "distilled"]
    assert "distilled, training seed 0: the cached cascade" in capsys.readouterr().err     # not trained again
    assert distilled["level_nfe"] == [1, 1] and distilled["fre_nfe"] == pytest.approx(1 / 4 + 1)
    assert distilled["nfe"] == 2 and distilled["train_fre_images"] == cascade["train_fre_images"]
    assert distilled["dmd2_fre_images"] == pytest.approx(2 * 8 * 0.625)          # 2 DMD2 iterations x 8 images
    assert single["level_nfe"] == [3] and single["fre_nfe"] == 3 and single["nfe"] == 3
    assert cascade["level_nfe"] == [3, 1] and cascade["fre_nfe"] == pytest.approx(3 / 4 + 1) and cascade["nfe"] == 4
    assert single["train_fre_images"] == 4 * 8 and cascade["train_fre_images"] == pytest.approx(4 * 8 * 0.625)
    assert cascade["throughput_b256"] > 0 and cascade["compare_to"] == "single"
    page = (tmp_path / "results.md").read_text()
    ratio = cascade["throughput_b256"] / single["throughput_b256"]
    assert "| cascade | 4: 3 (80), 8: 1 (1) | 1.75 | 20 | " in page and f"| single | {ratio:.2f} |" in page
    assert "| distilled | 4: 1 (80), 8: 1 (1) | 1.25 | 20 + 10 (DMD2) | " in page
