"""The direction of DMD2's generator update inside DMD2.train_step (DMD eq. 7 / DMD2 Sec. 4.1).

The distribution-matching gradient w.r.t. the generator's output x0 is

    grad = (p_fake - p_real) / mean_CHW |x0 - p_real|,   p_* = mu_*(x0 + sigma eps, sigma),

so gradient descent on G moves x0 towards what the real score (the teacher) denoises to and away
from what the fake score denoises to. The equation-level tests in test_methods.py check
distribution_matching_loss on its own; this test checks that train_step wires it the right way
round: with the real score replaced by a constant image A and the fake score (in the generator
turn) by a constant image B, a few generator turns must bring G's output closer to A and farther
from B. Swapping p_real and p_fake in train_step makes G walk towards B and this test fails.
It also checks that the real score is queried at noise levels in the configured
[min_step_percent, max_step_percent) part of the T-grid, and that the fake score sees the very
same noised input.
"""
import torch

from components.methods.dmd2 import DMD2, DMD2Config

N = 4          # batch size
STEPS = 6      # train steps, every one a generator turn


def _config() -> DMD2Config:
    # every field this test relies on is set explicitly: the defaults may change
    return DMD2Config(
        method="dmd2", iterations=100, batch_size=N, seed=0, device="cpu", precision="fp32",
        denoising_timesteps=(999,), backward_simulation=True, rollout_model="ema",
        lr_gen=1e-3, lr_fake=1e-4, lr_warmup=0, betas=(0.0, 0.999), weight_decay=0.0, grad_clip=1e6,
        dfake_gen_update_ratio=1, guidance_scale=1.0, min_step_percent=0.2, max_step_percent=0.6,
        num_train_timesteps=1000, ema_decay=0.0, w_gen=0.0, w_D=0.0, gan_max_step_percent=1.0,
        regression_weight=0.0, warm_start_iterations=0,
    )


def test_generator_moves_towards_the_real_score_and_away_from_the_fake_score(tiny_teacher, digits):
    torch.manual_seed(0)
    cfg = _config()
    method = DMD2(tiny_teacher, cfg, digits)
    assert method.D is None and method.G_ema is None

    C, H, W = digits.shape
    A = torch.full((1, C, H, W), 0.8)      # what the real score denoises every x_t to
    B = torch.full((1, C, H, W), -0.8)     # what the fake score denoises every x_t to (generator turn)

    real_calls, fake_calls = [], []

    def real_guided(x, sigma, class_labels, scale=1.0, *args, **kwargs):
        real_calls.append((x.detach().clone(), torch.as_tensor(sigma).detach().clone().reshape(-1)))
        return A.expand_as(x).clone()

    fake_forward = method.fake.forward

    def fake_generator_turn(x, sigma, class_labels, *args, **kwargs):
        if torch.is_grad_enabled():        # critic turn: edm_loss trains the real network as usual
            return fake_forward(x, sigma, class_labels, *args, **kwargs)
        fake_calls.append((x.detach().clone(), torch.as_tensor(sigma).detach().clone().reshape(-1)))
        return B.expand_as(x).clone()      # generator turn: p_fake under no_grad

    method.real.guided = real_guided
    method.fake.forward = fake_generator_turn

    g = torch.Generator().manual_seed(0)
    images, labels = digits.images[:N], digits.labels[:N]
    noise = torch.randn(N, C, H, W, generator=g)
    batch = {"real": images, "class_labels": labels, "noise": noise}
    s0 = method.student_sigmas[0]

    def out() -> torch.Tensor:
        with torch.no_grad():
            return method.G(noise * s0, s0, labels).float()

    def dist(x, target) -> float:
        return float((x - target).abs().mean())

    x_before = out()
    d_A0, d_B0 = dist(x_before, A), dist(x_before, B)
    for _ in range(STEPS):
        logs = method.train_step(batch)
        assert "loss_dm" in logs and not logs.get("skipped")
    x_after = out()
    d_A1, d_B1 = dist(x_after, A), dist(x_after, B)

    # the real score was queried once per generator turn, and the fake score on the same x_t, sigma
    assert len(real_calls) == STEPS and len(fake_calls) == STEPS
    for (x_r, s_r), (x_f, s_f) in zip(real_calls, fake_calls):
        assert torch.equal(x_r, x_f) and torch.equal(s_r, s_f)

    # noise levels: indices in [int(0.2 T), int(0.6 T)) of the ascending T-grid, and not all equal
    T = cfg.num_train_timesteps
    lo = float(method.sigma_grid[int(cfg.min_step_percent * T)])
    hi = float(method.sigma_grid[int(cfg.max_step_percent * T) - 1])
    sigmas = torch.cat([s for _, s in real_calls])
    assert sigmas.numel() == STEPS * N
    assert (sigmas >= lo * (1 - 1e-6)).all() and (sigmas <= hi * (1 + 1e-6)).all(), (sigmas, lo, hi)
    assert sigmas.unique().numel() > 1

    # direction: G's output on fixed noise moved towards p_real = A and away from p_fake = B
    assert d_A1 < d_A0 - 0.05, (d_A0, d_A1)
    assert d_B1 > d_B0 + 0.05, (d_B0, d_B1)
    shift = (x_after - x_before).mean()      # the mean pixel moved up, along A - B
    assert shift > 0.05, float(shift)
