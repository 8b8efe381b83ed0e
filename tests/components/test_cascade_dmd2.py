"""DMD2 on a LowDiff cascade (components/methods/cascade_dmd2.py): the distribution matching gradient is zero while
the fake score is the real one, the student is a cascade with one evaluation per level, exact resume, the stage
after a LowDiff training, bad input."""
import math

import pytest
import torch

from components.config import ConfigError
from components.diffusion import load_denoiser, save_denoiser
from components.diffusion.cascade import CascadeDenoiser, noise_downsample, start_level
from components.diffusion.generate import balanced_labels, generate
from components.methods import build_method, distill, distill_stages, parse_distill_config

LOWDIFF = dict(method="lowdiff", iterations=4, batch_size=16, log_every=2, checkpoint_every=0, fid_every=0,
               resolutions=[4, 8], steps=[3, 2], start_sigma=[1.0], train_sigma_max=[5.0])
TINY = dict(method="cascade_dmd2", iterations=6, batch_size=16, log_every=2, checkpoint_every=0, fid_every=0,
            dfake_gen_update_ratio=2)


@pytest.fixture(scope="module")
def cascade(tiny_teacher, digits):
    """A LowDiff cascade (4x4 -> 8x8 on the digits), trained a few iterations: the teacher these tests distil."""
    method = build_method(tiny_teacher, LOWDIFF, digits)
    distill(method, progress=False)
    return method.student()


def test_while_the_fake_score_is_the_real_one_the_distribution_matching_gradient_is_zero(cascade, digits):
    """mu_fake starts as a copy of mu_real: p_fake == p_real at every level (each given the same low-resolution
    input), so the first generator turn's L_DM and its gradient are exactly zero; the fake score then moves."""
    method = build_method(cascade, TINY, digits)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(digits.images), generator=g)[:16]
    batch = {"real": digits.images[idx], "class_labels": digits.labels[idx],
             "noise": torch.randn(16, 1, 8, 8, generator=g)}
    logs = method.train_step(batch)
    assert logs["loss_dm"] == 0.0 and logs["loss_dm_4px"] == 0.0 and logs["loss_dm_8px"] == 0.0
    assert logs["grad_norm_G"] == 0.0 and logs["grad_norm_fake"] > 0
    logs = method.train_step(batch)                                       # a critic-only turn (ratio 2)
    assert "loss_dm" not in logs and math.isfinite(logs["loss_fake"])
    logs = method.train_step(batch)                                       # the fake score has moved: L_DM != 0
    assert logs["loss_dm"] > 0 and logs["grad_norm_G"] > 0


def test_the_student_is_a_cascade_with_one_evaluation_per_level(cascade, digits):
    """One Heun step per level from the teacher's start noise: the step to 0 returns D(x_in), so the cascade sampler
    runs G once at 4x4 from the pooled noise x sigma_max and once at 8x8 from the upsampled result + s_1 n."""
    method = build_method(cascade, {**TINY, "iterations": 2}, digits)
    distill(method, progress=False)
    student = method.student()
    assert isinstance(student, CascadeDenoiser) and not any(p.requires_grad for p in student.parameters())
    assert [(lv["resolution"], lv["steps"], lv["sigma_start"]) for lv in student.sampling["levels"]] == [
        (4, 1, cascade.sigma_max), (8, 1, 1.0)]
    labels = balanced_labels(6, 10)
    gen = generate(student, labels, seed=3)
    assert gen.nfe == 2 and gen.images.shape == (6, 1, 8, 8)
    # by hand: generate's noise for seed 3, then the level's start noise from the same generator
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 1, 8, 8, generator=g)
    with torch.no_grad():
        low = student(noise_downsample(z, 2) * student.sigma_max, student.sigma_max, labels)
        x_in, up = start_level(low, 8, 1.0, g)
        want = student(x_in, 1.0, labels, lowres=up)
    assert torch.allclose(gen.images, want.clamp(-1, 1), atol=1e-5)


def test_a_killed_run_resumes_exactly_and_the_student_folder_round_trips(cascade, digits, tmp_path):
    cfg = {**TINY, "checkpoint_every": 2, "checkpoint_dir": str(tmp_path / "a")}
    full = build_method(cascade, cfg, digits)
    history = distill(full, progress=False)
    assert all(math.isfinite(v) for h in history for v in h.values())
    distill(build_method(cascade, {**cfg, "iterations": 4, "checkpoint_dir": str(tmp_path / "b")}, digits),
            progress=False)
    resumed = build_method(cascade, {**cfg, "checkpoint_dir": str(tmp_path / "b")}, digits)
    distill(resumed, progress=False)
    a, b = full.student().state_dict(), resumed.student().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    save_denoiser(full.student(), tmp_path / "student")
    back = load_denoiser(tmp_path / "student")
    labels = balanced_labels(4, 10)
    assert back.sampling == full.student().sampling
    assert torch.equal(generate(back, labels, seed=1).images, generate(full.student(), labels, seed=1).images)


def test_after_a_lowdiff_training_distill_cascade_dmd2_adds_a_second_step():
    """distill.cascade_dmd2 on a LowDiff section: two steps, the training without that key (its cache is untouched by
    the second step's settings), then cascade_dmd2 with the section's shared keys and train_sigma_max."""
    cfg = parse_distill_config({**LOWDIFF, "seed": 3, "cascade_dmd2": {"iterations": 7, "lr_gen": 1e-4}})
    (first_id, first), (second_id, second) = distill_stages(cfg)
    assert first_id is None and first["method"] == "lowdiff" and "cascade_dmd2" not in first
    assert second_id == "distill_cascade" and second["method"] == "cascade_dmd2"
    assert (second["iterations"], second["lr_gen"], second["seed"], second["batch_size"]) == (7, 1e-4, 3, 16)
    assert second["train_sigma_max"] == [5.0]
    assert distill_stages(parse_distill_config(LOWDIFF)) == [(None, parse_distill_config(LOWDIFF).model_dump(
        mode="json"))]


@pytest.mark.parametrize("override, field, says", [
    ({"cascade_dmd2": {"lr_gen": -1}}, "distill.cascade_dmd2.lr_gen", "greater than 0"),
    ({"cascade_dmd2": {"w_gen": 0.1}}, "distill.cascade_dmd2.w_gen", ""),
    ({"cascade_dmd2": {"method": "dmd2"}}, "distill.cascade_dmd2.method", "leave it out"),
])
def test_a_bad_cascade_dmd2_section_names_the_field(override, field, says):
    with pytest.raises(ConfigError, match=rf"'{field}'.*{says}") as err:
        parse_distill_config({**LOWDIFF, **override})
    assert "\n" not in str(err.value)


def test_bad_teachers_and_levels_name_the_field(tiny_teacher, cascade, digits):
    with pytest.raises(ConfigError, match=r"'distill.method': cascade_dmd2 distils a LowDiff cascade.*EDMDenoiser"):
        build_method(tiny_teacher, TINY, digits)
    with pytest.raises(ConfigError, match=r"'distill.train_sigma_max': 0.5 must lie in \[start_sigma 1.0"):
        build_method(cascade, {**TINY, "train_sigma_max": [0.5]}, digits)
    with pytest.raises(ConfigError, match=r"'distill.train_sigma_max'.*one noise level per level above the first"):
        build_method(cascade, {**TINY, "train_sigma_max": [2.0, 3.0]}, digits)
    with pytest.raises(ConfigError, match=r"'distill.level_weights'"):
        build_method(cascade, {**TINY, "level_weights": [1.0]}, digits)
