"""guided_pipeline end to end on the session's tiny ZenML store (tests/pipelines/conftest.py, tiny_runs): the
guided stage and one distill step per halving, each student its own artifact; a chain asked for one more
halving reuses the rest from the cache; the sweep over w in the report; the export with w as an input."""
from tests.pipelines.conftest import GUIDED


def test_the_guided_chain_runs_one_step_per_halving_and_sweeps_w(pipeline_runs):
    out = pipeline_runs["guided"]["info"]
    assert out["status"].endswith("completed"), out["steps"]
    chain = ("distill_step", "halve_to_2")
    assert all(out["steps"][n].endswith("completed") for n in chain), out["steps"]
    assert out["student_kinds"] == {n: "guided" for n in chain}              # w stays an input throughout
    assert "halve_to_1" not in out["steps"]
    assert out["metrics"]["student_nfe"] == GUIDED["target_steps"]          # the last halving is evaluated
    # the sweep: the CFG teacher (2 evaluations per step where w > 0) and each stage's student (1 per step)
    got = {(p["model"], p["w"]): p["nfe"] for p in out["guidance"]}
    teacher_nfe = got[("teacher (CFG)", 0.0)]
    assert got == {("teacher (CFG)", 0.0): teacher_nfe, ("teacher (CFG)", 2.0): 2 * teacher_nfe,
                   ("student, 4-step", 0.0): 4, ("student, 4-step", 2.0): 4,
                   ("student, 2-step", 0.0): 2, ("student, 2-step", 2.0): 2}
    assert "FID and class accuracy vs guidance w" in out["report"] and "student, 2-step" in out["report"]
    # exported with w as an input: fewstep's folder (no stock pipeline drives it; the card says so)
    assert {"unet", "scheduler", "denoiser.json", "w_embedding.safetensors", "README.md", "onnx"} <= set(out["exported"])
    assert "model_index.json" not in out["exported"]
    # passed and promoted to staging - then archived when 'guided_longer' (below) took staging
    assert out["model_stage"] == "archived" and "PASSED" in out["report"]
    assert pipeline_runs["guided_longer"]["info"]["model_stage"] == "staging"


def test_one_more_halving_reuses_the_guided_stage_and_earlier_halvings(pipeline_runs):
    """target_steps 2 -> 1: the guided stage, the halving to 2 and their sweeps come from the cache; only the
    halving to 1 (and what reads it) runs."""
    out = pipeline_runs["guided_longer"]["info"]
    steps = out["steps"]
    for name in ("teacher_step", "distill_step", "halve_to_2", "guidance_sweep_teacher", "guidance_sweep_4_steps",
                 "guidance_sweep_2_steps"):
        assert steps[name].endswith("cached"), (name, steps[name])
    for name in ("halve_to_1", "guidance_sweep_1_steps", "evaluate_student"):
        assert steps[name].endswith("completed"), (name, steps[name])
    assert out["metrics"]["student_nfe"] == 1
    assert {p["model"] for p in out["guidance"]} == {"teacher (CFG)", "student, 4-step", "student, 2-step",
                                                      "student, 1-step"}
