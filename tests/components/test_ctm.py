"""CTM (components/methods/ctm.py, CTMDenoiser, gamma-sampling): the parametrisation, the loss's parts
against the closed-form Gaussian ODE, the sampler, save/load, export parity, resume and bad config."""
import math

import pytest
import torch

from components.config import ConfigError
from components.diffusion import CTMDenoiser, load_denoiser, sample_fewstep, sample_gamma, save_denoiser
from components.diffusion.noise_schedule import karras_sigmas, student_sigmas
from components.methods import build_method, distill
from components.methods.ctm import ctm_loss, ctm_pair, heun_segment, pseudo_huber

SD = 0.5                                 # sigma_data: the Gaussian data below is N(0, SD^2 I)
TINY = dict(method="ctm", iterations=6, batch_size=16, seed=0, log_every=2, checkpoint_every=0, fid_every=0)


class Gaussian(torch.nn.Module):
    """Data ~ N(0, SD^2 I): the exact denoiser D(x, t) = SD^2 / (SD^2 + t^2) x and the exact ODE jump
    G(x_t, t, s) = x_t sqrt((SD^2 + s^2) / (SD^2 + t^2)) (../shared/PAPERS.md, CTM)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale              # != 1: a wrong jumper

    def forward(self, x, t, labels):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return SD**2 / (SD**2 + t**2) * x

    def jump(self, x, t, s, labels):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
        s = torch.as_tensor(s, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.scale * x * ((SD**2 + s**2) / (SD**2 + t**2)).sqrt()


@pytest.fixture(scope="module")
def student(tiny_teacher):
    G = CTMDenoiser.from_teacher(tiny_teacher).eval()
    with torch.no_grad():                  # a trained-looking s embedding (it starts at zero)
        torch.manual_seed(0)
        for p in G.s_embed.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return G


def _x(n=4, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_a_new_student_is_its_teacher_for_every_s(tiny_teacher):
    G = CTMDenoiser.from_teacher(tiny_teacher).eval()
    x, y, t = 5 * _x(), torch.arange(4), torch.tensor([5.0, 1.0, 0.3, 40.0])
    with torch.no_grad():
        D = tiny_teacher(x, t, y)
        for s in (torch.zeros(4), 0.5 * t, t):
            assert torch.allclose(G.g(x, t, s, y), D, atol=1e-6)
        assert torch.equal(G(x, t, y), D)                 # forward = G(x, t, 0): the plain UNet


def test_the_boundary_conditions(student):
    x, y, t = 5 * _x(), torch.arange(4), torch.tensor([5.0, 1.0, 0.3, 40.0])
    with torch.no_grad():
        assert torch.equal(student.jump(x, t, t, y), x)                         # G(x, t, t) = x
        assert torch.equal(student.jump(x, t, torch.zeros(4), y), student(x, t, y))   # G(x, t, 0) = forward
        # s at or below sigma_min is s = 0 for the embedding: exactly the plain UNet
        e = student.s_embedding(torch.tensor([0.0, student.sigma_min, 1e-4, 1.0]))
        assert torch.equal(e[:3], torch.zeros_like(e[:3])) and bool(e[3].abs().sum() > 0)
        # ... while the trained embedding changes g for s > 0
        assert not torch.allclose(student.g(x, t, 0.5 * t, y), student(x, t, y))


def test_heun_segment_is_the_teachers_heun_sampler(tiny_teacher):
    grid = karras_sigmas(18, 0.002, 80.0, append_zero=False)
    x, y = 80 * _x(), torch.arange(4)
    with torch.no_grad():
        ours = heun_segment(tiny_teacher, x, grid, torch.full((4,), 3), 4, y)
        from components.diffusion import sample_heun

        ref = sample_heun(tiny_teacher, x, grid[3:8], {"class_labels": y})
    assert torch.allclose(ours, ref, atol=1e-5)


def test_heun_segment_follows_the_closed_form_ode():
    grid = karras_sigmas(80, 0.002, 80.0, append_zero=False)      # fine enough for Heun's error to be small
    n = torch.tensor([2, 20, 40, 60])
    x = grid[n].view(-1, 1, 1, 1) * _x()
    out = heun_segment(Gaussian(), x, grid, n, 4, None)
    exact = Gaussian().jump(x, grid[n], grid[n + 4], None)
    rel = (out - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
    assert float(rel.max()) < 2e-3


def test_the_ctm_loss_vanishes_for_the_exact_solution_only():
    """Both sides of the CTM loss, with the closed-form Gaussian ODE: an exact student matches the target
    up to Heun's error; a student whose jumps are 10% off does not."""
    grid = karras_sigmas(80, 0.002, 80.0, append_zero=False)
    n, m, k = torch.tensor([0, 15, 30, 50]), torch.tensor([25, 40, 79, 60]), 3
    x_t = grid[n].view(-1, 1, 1, 1) * _x()
    exact = Gaussian()
    est0, tgt0 = ctm_pair(exact, exact, exact, exact, x_t, grid, n, k, m, None)
    good = ctm_loss(est0, tgt0, "l2")
    est0, tgt0 = ctm_pair(Gaussian(1.1), exact, exact, exact, x_t, grid, n, k, m, None)
    bad = ctm_loss(est0, tgt0, "l2")
    assert float(good.max()) < 1e-4 and float(bad.min()) > 100 * float(good.max())


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"real": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "class_labels": torch.arange(n) % 10,
            "noise": torch.randn(n, 1, 8, 8, generator=g)}


def test_a_training_step_updates_the_student_and_its_target(tiny_teacher, digits):
    m = build_method(tiny_teacher, TINY, digits)
    g0 = torch.cat([p.detach().flatten().clone() for p in m.G.parameters()])
    t0 = torch.cat([p.detach().flatten().clone() for p in m.G_target.module.parameters()])
    logs = m.train_step(_batch())
    assert logs["loss_ctm"] > 0 and logs["loss_dsm"] > 0 and logs["lambda_dsm"] > 0 and not logs["skipped"]
    g1 = torch.cat([p.detach().flatten() for p in m.G.parameters()])
    t1 = torch.cat([p.detach().flatten() for p in m.G_target.module.parameters()])
    assert not torch.equal(g0, g1)
    assert not any(p.requires_grad for p in m.G_target.parameters())     # stop-gradient target
    # the target's first EMA update copies G (components/training.ema_model: update 0 copies)
    assert torch.equal(t1, g1) and not torch.equal(t0, t1)


def test_times_are_ordered_on_the_grid(tiny_teacher, digits):
    m = build_method(tiny_teacher, {**TINY, "num_scales": 10, "max_heun_steps": 3}, digits)
    ks = []
    for _ in range(200):
        k, n, s_idx = m.sample_times(64)
        ks.append(k)
        assert 1 <= k <= 3 and bool((n >= 0).all()) and bool((n + k <= s_idx).all()) and bool((s_idx <= 9).all())
    counts = [ks.count(k) for k in (1, 2, 3)]
    assert counts[0] < counts[1] < counts[2]                 # p(k) proportional to k


def test_gamma_one_is_consistency_multistep_and_gamma_zero_is_deterministic(student):
    x, y = 80 * _x(8), torch.arange(8) % 10
    sig = student_sigmas(4, student.sigma_min, student.sigma_max)
    a = sample_gamma(student, x, sig, {"class_labels": y, "gamma": 1.0}, generator=torch.Generator().manual_seed(1))
    b = sample_fewstep(student, x, sig, {"class_labels": y}, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-6)
    c = sample_gamma(student, x, sig, {"class_labels": y, "gamma": 0.0}, generator=torch.Generator().manual_seed(1))
    d = sample_gamma(student, x, sig, {"class_labels": y, "gamma": 0.0}, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c, d) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="gamma must lie in"):
        sample_gamma(student, x, sig, {"class_labels": y, "gamma": 1.5})
    with pytest.raises(ValueError, match="must decrease strictly and end in 0"):
        sample_gamma(student, x, torch.tensor([1.0, 2.0, 0.0]), {"class_labels": y})
    g = torch.Generator().manual_seed(5)
    before = g.get_state()
    sample_gamma(student, x, sig, {"class_labels": y, "gamma": 0.0}, generator=g)
    assert torch.equal(g.get_state(), before)                # gamma = 0 draws nothing
    with pytest.raises(ValueError, match="expected 0 <= s <= t"):
        student.jump(x, torch.full((8,), 1.0), torch.full((8,), 2.0), y)     # s > t


def test_gamma_zero_with_the_exact_jump_is_the_exact_ode_solution_at_any_step_count():
    x = 80 * _x()
    exact = Gaussian().jump(x, 80.0, 0.0, None)
    for steps in (1, 2, 4):
        out = sample_gamma(Gaussian(), x, student_sigmas(steps, 0.002, 80.0), {"class_labels": None, "gamma": 0.0})
        assert torch.allclose(out, exact, atol=1e-5)


def test_save_and_load_keep_the_s_embedding(student, tmp_path):
    save_denoiser(student, tmp_path / "ctm")
    back = load_denoiser(tmp_path / "ctm")
    assert isinstance(back, CTMDenoiser)
    x, y, t = 5 * _x(), torch.arange(4), torch.tensor([5.0, 1.0, 0.3, 40.0])
    with torch.no_grad():
        assert torch.equal(back.jump(x, t, 0.3 * t, y), student.jump(x, t, 0.3 * t, y))
    (tmp_path / "ctm" / "s_embedding.safetensors").unlink()
    with pytest.raises(ConfigError, match="s_embedding.safetensors is missing"):
        load_denoiser(tmp_path / "ctm")


def test_export_runs_in_stock_diffusers_for_one_step_and_gamma_one(student, tmp_path):
    """unet/ of a CTM export is G(., t, 0): stock ConsistencyModelPipeline reproduces the project's gamma-sampling
    at 1 step and at gamma = 1 (consistency multistep) from the same seed; the s embedding rides along."""
    from diffusers import ConsistencyModelPipeline

    from components.diffusion.generate import generate
    from components.export import export_student

    labels = [0, 3, 5, 9]
    for steps, kw, tol in ((1, {"num_inference_steps": 1}, 1e-4), (4, {"timesteps": [750, 500, 250, 0], "num_inference_steps": None}, 1e-3)):
        s = student.with_sampling(steps, 1.0)
        folder = export_student(s, tmp_path / f"ctm{steps}", {"method": "ctm"}, onnx=False)
        assert (folder / "s_embedding.safetensors").is_file()
        assert "gamma" in (folder / "README.md").read_text() and "[750, 500, 250, 0]" in (folder / "README.md").read_text()
        assert isinstance(load_denoiser(folder), CTMDenoiser)
        pipe = ConsistencyModelPipeline.from_pretrained(folder)
        stock = pipe(batch_size=4, class_labels=torch.tensor(labels), generator=torch.Generator().manual_seed(7),
                     output_type="np", **kw).images
        ours = ((generate(s, torch.tensor(labels), seed=7, batch_size=4).images + 1) / 2).clamp(0, 1)
        diff = float((torch.from_numpy(stock) - ours.permute(0, 2, 3, 1)).abs().max())
        assert diff <= tol, f"{steps} steps: stock diffusers vs project sampler differ by {diff:.2e}"


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_teacher, digits, tmp_path, one_thread):
    cfg = {**TINY, "checkpoint_every": 2, "log_every": 1, "w_gan": 0.1, "resume": "auto"}
    straight = build_method(tiny_teacher, {**cfg, "checkpoint_dir": str(tmp_path / "a")}, digits)
    distill(straight, progress=False)

    class Killed(Exception):
        pass

    def kill(iteration, row):
        if iteration == 5:
            raise Killed

    crashed = {**cfg, "checkpoint_dir": str(tmp_path / "b")}
    with pytest.raises(Killed):
        distill(build_method(tiny_teacher, crashed, digits), progress=False, callback=kill)
    resumed = build_method(tiny_teacher, crashed, digits)
    distill(resumed, progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    for net in ("G", "G_target", "G_ema", "D_net", "D"):
        diff = [k for k in a[net] if not torch.equal(a[net][k], b[net][k])]
        assert not diff, f"{net} differs after resume: {diff[:3]}"


@pytest.mark.parametrize("change, match", [
    ({"max_heun_steps": 18, "num_scales": 18}, "distill.max_heun_steps"),
    ({"gamma": 1.5}, "distill.gamma"),
    ({"distance": "lpips"}, "distill.distance"),
    ({"lr_gen": 1e-3}, "distill.lr_gen"),                     # a DMD2 key: unknown to CTM
])
def test_bad_config_names_the_field(tiny_teacher, digits, change, match):
    with pytest.raises(ConfigError, match=match):
        build_method(tiny_teacher, {**TINY, **change}, digits)


def test_distance():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    c = 0.00054 * 4
    assert torch.allclose(pseudo_huber(a, b), torch.full((2,), math.sqrt(16 + c * c) - c))
    assert torch.equal(pseudo_huber(a, a), torch.zeros(2))
