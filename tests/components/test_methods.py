"""Contract tests every method passes, plus DMD2's own equations."""
import math

import pytest
import torch

from components.config import ConfigError
from components.methods import METHODS, build_method, distill
from components.methods.dmd2 import (critic_gan_loss, distribution_matching_loss, generator_gan_loss,
                                     regression_loss)

# the defaults these tests were written against (params.yaml's are tuned for 900 iterations), no checkpoints
BASE = dict(lr_gen=2e-4, lr_fake=2e-4, w_gen=3e-3, w_D=1e-2, gan_max_step_percent=1.0)
SHARED = dict(iterations=8, batch_size=16, seed=0, log_every=4, checkpoint_every=0, fid_every=0)
TINY = dict(**SHARED, **BASE)
CONTRACT = {"dmd2": TINY, "ctm": SHARED, "guided": SHARED, "progressive": SHARED,  # each method's tiny config
            "msd": {**TINY, "students": 2, "subset": 1},                        # MSD: one subset's student
            "lowdiff": {**SHARED, "resolutions": [4, 8], "steps": [2, 2], "start_sigma": [1.0]},
            "cascade_dmd2": SHARED}                                             # DMD2 on a LowDiff cascade
_CASCADE = {}


def _teacher(name, tiny_teacher, digits):
    """The teacher a method distils: progressive halves a guided student (sampled with DDIM), cascade_dmd2 a LowDiff
    cascade (trained 2 iterations, built once), the others distil the EDM teacher."""
    if name == "cascade_dmd2":
        if "cascade" not in _CASCADE:
            lowdiff = build_method(tiny_teacher, {**CONTRACT["lowdiff"], "method": "lowdiff", "iterations": 2}, digits)
            distill(lowdiff, progress=False)
            _CASCADE["cascade"] = lowdiff.student()
        return _CASCADE["cascade"]
    if name != "progressive":
        return tiny_teacher
    from components.diffusion import GuidedDenoiser, karras_sigmas

    with torch.random.fork_rng(devices=[]):          # the w embedding's random first layer: the same every call
        torch.manual_seed(0)
        S = GuidedDenoiser.from_teacher(tiny_teacher)
    S.sampling = {"sampler": "ddim", "sigmas": karras_sigmas(4, S.sigma_min, S.sigma_max).tolist()}
    return S


def _params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tiny_teacher, digits):
    teacher = _teacher(name, tiny_teacher, digits)
    method = build_method(teacher, {"method": name, **CONTRACT[name]}, digits)
    history = distill(method, progress=False)
    assert history and history[-1]["iteration"] == TINY["iterations"]
    assert all(math.isfinite(v) for h in history for v in h.values())
    student = method.student()
    assert student.sampling["sampler"] in ("fewstep", "heun", "gamma", "ddim", "cascade")
    assert not any(p.requires_grad for p in student.parameters())
    # the student moved away from where it started: the teacher, or (LowDiff: trained from scratch) its first weights
    start = teacher.unet if name != "lowdiff" else build_method(teacher, {"method": name, **CONTRACT[name]},
                                                                digits).student().unet
    assert not torch.allclose(_params(student.unet), _params(start))
    state = method.state_dict()
    assert isinstance(state, dict) and "step" in state and state["step"] == TINY["iterations"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_is_seed_deterministic(name, tiny_teacher, digits):
    runs = []
    for _ in range(2):
        m = build_method(_teacher(name, tiny_teacher, digits), {"method": name, **CONTRACT[name]}, digits)
        distill(m, progress=False)
        runs.append(_params(m.student()))
    assert torch.equal(runs[0], runs[1])
    m = build_method(_teacher(name, tiny_teacher, digits), {"method": name, **{**CONTRACT[name], "seed": 1}}, digits)
    distill(m, progress=False)
    assert not torch.equal(runs[0], _params(m.student()))


def test_dm_loss_gradient_is_the_normalised_score_difference():
    """DMD2 Sec 4.1: dL/dx0 = (p_fake - p_real) / mean_CHW|x0 - p_real| per sample (/ CHW from the mean)."""
    torch.manual_seed(0)
    x0 = torch.randn(3, 1, 4, 4, requires_grad=True)
    p_real, p_fake = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    loss = distribution_matching_loss(x0, p_real, p_fake)
    assert loss.shape == (3,)
    loss.sum().backward()
    w = (x0.detach() - p_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(x0.grad, (p_fake - p_real) / w / 16, atol=1e-6)


def test_dm_loss_normalises_per_sample_not_per_batch():
    torch.manual_seed(0)
    x0 = torch.randn(2, 1, 4, 4, requires_grad=True)
    p_real, p_fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    distribution_matching_loss(x0, p_real, p_fake).sum().backward()
    g_first = x0.grad[0].clone()
    x0b = x0.detach().clone()
    x0b[1] = x0b[1] * 100           # blow up the second sample only
    x0b.requires_grad_(True)
    distribution_matching_loss(x0b, p_real, p_fake).sum().backward()
    assert torch.allclose(x0b.grad[0], g_first, atol=1e-6)


def test_two_time_scale_update_rule(tiny_teacher, digits):
    """With dfake_gen_update_ratio=3, G changes only on iterations 0, 3, 6 ...; fake every iteration."""
    m = build_method(tiny_teacher, {"method": "dmd2", **TINY, "dfake_gen_update_ratio": 3}, digits)
    batch = {"real": digits.images[:8], "class_labels": digits.labels[:8], "noise": torch.randn(8, 1, 8, 8)}
    gen_steps = []
    for _ in range(4):
        before_G, before_fake = _params(m.G), _params(m.fake)
        logs = m.train_step(batch)
        gen_steps.append(not torch.equal(before_G, _params(m.G)))
        assert not torch.equal(before_fake, _params(m.fake))
        assert ("loss_dm" in logs) == gen_steps[-1]
    assert gen_steps == [True, False, False, True]


def test_fake_score_loss_decreases(tiny_teacher, digits):
    """Toy: with G nearly frozen (huge ratio), mu_fake's denoising loss falls as it fits G's samples."""
    m = build_method(tiny_teacher, {"method": "dmd2", **BASE, "iterations": 60, "batch_size": 32, "seed": 0,
                                    "log_every": 20, "dfake_gen_update_ratio": 1000, "lr_fake": 1e-3}, digits)
    h = distill(m, progress=False)
    assert h[-1]["loss_fake"] < h[0]["loss_fake"]


@pytest.mark.parametrize("steps, match", [([999, 999], "strictly decreasing"), ([249, 999], "strictly decreasing"),
                                          ([], "at least one"), ([1000, 10], r"\[0, 999\]")])
def test_step_list_must_be_strictly_decreasing(tiny_teacher, digits, steps, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_method(tiny_teacher, {"method": "dmd2", "denoising_timesteps": steps}, digits)
    assert "distill.denoising_timesteps" in str(err.value) and "\n" not in str(err.value)


def test_bottleneck_is_the_unets_mid_block_output(tiny_teacher):
    seen = {}
    hook = tiny_teacher.unet.mid_block.register_forward_hook(lambda m, i, o: seen.__setitem__("mid", o))
    x, y, s = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 10]), torch.tensor([0.01, 0.5, 3.0, 80.0])
    try:
        tiny_teacher(x, s, y)
    finally:
        hook.remove()
    assert torch.allclose(tiny_teacher.bottleneck(x, s, y), seen["mid"], atol=1e-6)


def test_gan_losses():
    """DMD2 Sec. 4.2: critic softplus(D(fake)) + softplus(-D(real)); generator softplus(-D(fake))."""
    zero = torch.zeros(3)
    assert torch.allclose(critic_gan_loss(zero, zero), torch.full((3,), 2 * math.log(2)))
    confident = critic_gan_loss(torch.full((3,), -8.0), torch.full((3,), 8.0))
    assert (confident < 1e-3).all()                                   # a critic that is right pays ~0
    logits = torch.zeros(2, requires_grad=True)
    generator_gan_loss(logits).sum().backward()
    assert (logits.grad < 0).all()                                    # G is pushed to raise D(fake)
    assert torch.allclose(regression_loss(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)), torch.ones(2))


def test_gan_trains_the_head_with_the_fake_score_and_reaches_the_generator(tiny_teacher, digits):
    batch = {"real": digits.images[:8], "class_labels": digits.labels[:8], "noise": torch.randn(8, 1, 8, 8)}
    cfg = {"method": "dmd2", **TINY, "w_gen": 0.5, "w_D": 1.0}
    gan = build_method(tiny_teacher, cfg, digits)
    before = _params(gan.D)
    logs = gan.train_step(batch)
    assert not torch.equal(before, _params(gan.D)) and {"loss_gan_G", "loss_gan_D"} <= set(logs)
    plain = build_method(tiny_teacher, {**cfg, "w_gen": 0.0, "w_D": 0.0}, digits)
    assert plain.D is None
    logs_plain = plain.train_step(batch)
    assert "loss_gan_G" not in logs_plain and "loss_gan_D" not in logs_plain
    # the same first batch and noise: only the GAN term differs, so G moved differently
    assert not torch.allclose(_params(gan.G), _params(plain.G))


def test_backward_simulation_feeds_the_students_own_rollout(tiny_teacher, digits):
    """Sec. 4.3: the input of step k is the student's steps 0..k-1 re-noised, not noised real data."""
    cfg = {"method": "dmd2", **TINY, "denoising_timesteps": [999, 499]}
    m = build_method(tiny_teacher, cfg, digits)
    batch = {"real": digits.images[:4], "class_labels": digits.labels[:4], "noise": torch.randn(4, 1, 8, 8)}
    s0, s1 = m.student_sigmas
    assert s0 == pytest.approx(tiny_teacher.sigma_max) and 0 < s1 < s0
    assert m.student().sampling["sigmas"] == [pytest.approx(s0), pytest.approx(s1, rel=1e-5), 0.0]
    with torch.no_grad():                                # the EMA generator (the exported one) rolls out
        for p in m.G_ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for _ in range(20):                                  # draw until step k = 1 is picked
        state = m.rng.get_state()
        x, sigma = m.generator_input(batch, batch["class_labels"])
        if sigma == s1:
            break
    assert sigma == s1
    replay = torch.Generator().set_state(state)
    assert int(torch.randint(0, 2, (1,), generator=replay)) == 1
    with torch.no_grad():
        x0 = m.G_ema(batch["noise"] * s0, s0, batch["class_labels"])
        x0_online = m.G(batch["noise"] * s0, s0, batch["class_labels"])
    expected = x0 + s1 * torch.randn(x0.shape, generator=replay)
    assert torch.allclose(x, expected, atol=1e-5)
    assert not torch.allclose(x0, x0_online, atol=1e-3)
    m.cfg = m.cfg.model_copy(update={"rollout_model": "online"})   # the reference code's choice: online G
    m.rng.set_state(state)
    x_online, _ = m.generator_input(batch, batch["class_labels"])
    replay.set_state(state)
    torch.randint(0, 2, (1,), generator=replay)
    assert torch.allclose(x_online, x0_online + s1 * torch.randn(x0.shape, generator=replay), atol=1e-5)
    ablation = build_method(tiny_teacher, {**cfg, "backward_simulation": False}, digits)
    ablation.rng.set_state(state)
    x_real, _ = ablation.generator_input(batch, batch["class_labels"])
    replay.set_state(state)
    torch.randint(0, 2, (1,), generator=replay)
    assert torch.allclose(x_real, batch["real"] + s1 * torch.randn(x0.shape, generator=replay), atol=1e-5)


def test_multistep_student_trains_and_samples(tiny_teacher, digits):
    from components.diffusion.generate import balanced_labels, generate

    m = build_method(tiny_teacher, {"method": "dmd2", **TINY, "denoising_timesteps": [999, 749, 499, 249]}, digits)
    distill(m, progress=False)
    gen = generate(m.student(), balanced_labels(20, digits.num_classes), seed=0)
    assert gen.nfe == 4 and torch.isfinite(gen.images).all()


@pytest.fixture(scope="module")
def tiny_pairs(tiny_teacher, tmp_path_factory):
    from components.config import PairsConfig
    from components.diffusion.pairs import generate_pairs

    return generate_pairs(tiny_teacher, PairsConfig(num_pairs=64, shard_size=32, batch_size=64),
                          tmp_path_factory.mktemp("pairs"), progress=False)


def test_regression_needs_pairs_of_this_teacher(tiny_teacher, digits, tiny_pairs, tiny_teacher_cfg):
    with pytest.raises(ConfigError, match="teacher pairs"):
        build_method(tiny_teacher, {"method": "dmd2", "regression_weight": 0.25}, digits)
    from components.teacher import get_teacher

    other, _ = get_teacher(tiny_teacher_cfg.model_copy(update={"seed": 1, "train_steps": 2}), digits, progress=False)
    with pytest.raises(ConfigError, match="regenerate the pairs"):
        build_method(other, {"method": "dmd2", "regression_weight": 0.25}, digits, tiny_pairs)
    with pytest.raises(ConfigError, match="one-step"):
        build_method(tiny_teacher, {"method": "dmd2", "warm_start_iterations": 2, "denoising_timesteps": [999, 499]},
                     digits, tiny_pairs)


def test_ode_warm_start_regresses_the_generator_onto_the_pairs(tiny_teacher, digits, tiny_pairs):
    def distance(G):
        with torch.no_grad():
            x0 = G(tiny_pairs.noise * tiny_teacher.sigma_max, tiny_teacher.sigma_max, tiny_pairs.labels)
        return float(regression_loss(x0, tiny_pairs.images).mean())

    m = build_method(tiny_teacher, {"method": "dmd2", **BASE, "iterations": 31, "batch_size": 32, "log_every": 1,
                                    "warm_start_iterations": 30, "lr_gen": 1e-3, "ema_decay": 0.0}, digits, tiny_pairs)
    start = distance(m.G)
    history = distill(m, progress=False)
    assert "loss_warm_start" in history[0] and "loss_dm" not in history[0] and "loss_dm" in history[-1]
    assert distance(m.G) < 0.8 * start
    m = build_method(tiny_teacher, {"method": "dmd2", **TINY, "regression_weight": 0.5}, digits, tiny_pairs)
    assert "loss_reg" in distill(m, progress=False)[0]


def _nan_generator_calls(method, bad_calls):
    """Make the generator return NaN on the given call numbers (0-based)."""
    calls = {"n": 0}
    original = method.G.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += 1
        return out * float("nan") if calls["n"] - 1 in bad_calls else out

    method.G.forward = forward


def test_nan_step_is_skipped_and_logged(tiny_teacher, digits):
    m = build_method(tiny_teacher, {"method": "dmd2", **TINY, "dfake_gen_update_ratio": 1}, digits)
    _nan_generator_calls(m, {0})
    batch = {"real": digits.images[:8], "class_labels": digits.labels[:8], "noise": torch.randn(8, 1, 8, 8)}
    before = _params(m.G)
    logs = m.train_step(batch)
    assert logs["skipped"] == 1.0 and "bad_G" in logs
    assert torch.equal(before, _params(m.G))                          # the bad G update was not applied
    assert all(torch.isfinite(p).all() for p in m.G.parameters())
    logs = m.train_step(batch)
    assert logs["skipped"] == 0.0 and not torch.equal(before, _params(m.G))


def test_bad_steps_in_a_row_stop_the_run(tiny_teacher, digits):
    from components.methods import DivergenceError

    m = build_method(tiny_teacher, {"method": "dmd2", **TINY, "iterations": 20, "dfake_gen_update_ratio": 1,
                                    "max_bad_steps": 3}, digits)
    _nan_generator_calls(m, set(range(2, 100)))
    with pytest.raises(DivergenceError, match="3 non-finite steps in a row") as err:
        distill(m, progress=False)
    assert "iteration 5" in str(err.value) and "distill.max_bad_steps" in str(err.value)


def test_bf16_autocast_switch(tiny_teacher, digits):
    m = build_method(tiny_teacher, {"method": "dmd2", **TINY, "iterations": 2, "precision": "bf16"}, digits)
    assert m.amp
    h = distill(m, progress=False)
    assert all(math.isfinite(v) for v in h[-1].values())
    assert not build_method(tiny_teacher, {"method": "dmd2", **TINY}, digits).amp    # auto on CPU: fp32
