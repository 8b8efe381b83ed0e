"""msd_pipeline end to end on the session's tiny ZenML store (tests/pipelines/conftest.py, tiny_runs): K = 2 smaller
students as a fan-out of distill steps (three stages each, every stage its own artifact), killed mid-fan-out and
rerun - only the unfinished stage runs again - then joined into one routed model that the evaluation, gate, export,
report and W&B steps treat as one."""
from tests.pipelines.conftest import MSD, MSD_KILL_AT

STAGES = ("tsm", "dm", "adv")


def test_a_killed_fan_out_reruns_only_what_had_not_finished(pipeline_runs):
    killed = pipeline_runs["msd_killed"]["info"]
    assert not killed["status"].endswith("completed")
    done_before = {n for n, s in killed["steps"].items() if s.endswith(("completed", "cached"))}
    assert MSD_KILL_AT not in done_before and "route_students" not in killed["steps"]
    branch_steps = {f"student_{k}_{s}" for k in range(MSD["students"]) for s in STAGES}
    finished = branch_steps & done_before
    assert finished and "student_0_adv" in finished                     # branch 0 had finished all its stages
    steps = pipeline_runs["msd"]["info"]["steps"]
    assert {n for n in branch_steps if steps[n].endswith("cached")} == finished
    assert {n for n in branch_steps if steps[n].endswith("completed")} == branch_steps - finished == {MSD_KILL_AT}
    for name in ("teacher_step", "teacher_pairs", "feature_net_step"):  # the shared upstream steps: once
        assert steps[name].endswith("cached")


def test_the_fan_out_joins_into_one_routed_model(pipeline_runs):
    out = pipeline_runs["msd"]["info"]
    assert out["status"].endswith("completed"), out["steps"]
    subsets = out["routed_subsets"]                         # balanced by class count: every class once
    assert len(subsets) == MSD["students"] and sorted(c for s in subsets for c in s) == list(range(10))
    # smaller students: every stage of a branch has the small network; the join holds K of them
    sizes = {n: p for n, p in out["branch_students"].items()}
    assert len(set(sizes.values())) == 1
    meta = out["route_metadata"]
    assert meta["students"] == MSD["students"] and meta["parameters_per_student"] == next(iter(sizes.values()))
    assert {"fan_out_seconds_one_machine", "fan_out_seconds_longest_branch"} <= set(meta)   # arithmetic: test_msd
    # evaluation, gate and export treat the bundle as one model
    assert out["metrics"]["student_nfe"] == 1 and out["gate"]["passed"] and out["model_stage"] == "staging"
    assert out["exported"] == ["README.md", "routing.json", "student_0", "student_1"]
    assert "PASSED" in out["report"]
    # one history: each series per student, the iteration counted on through the stages
    keys = {k for row in out["history"] for k in row}
    assert {"loss_tsm[s0]", "loss_tsm[s1]", "loss_dm[s1]", "loss_gan_D[s0]"} <= keys
    total = MSD["tsm_iterations"] + MSD["dm_iterations"] + MSD["iterations"]
    assert max(r["iteration"] for r in out["history"]) == total
