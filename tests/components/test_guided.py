"""Guided distillation (stage 1, components/methods/guided.py) and progressive distillation (stage 2,
components/methods/progressive.py): the DDIM step and its closed-form target against the Gaussian
probability-flow ODE, the w-conditioned student, the truncated-SNR weight, the halving bookkeeping,
save/load and bad input."""
import copy

import pytest
import torch

from components.config import ConfigError
from components.diffusion import GuidedDenoiser, ddim_step, ddim_target, load_denoiser, save_denoiser
from components.diffusion.generate import generate
from components.diffusion.noise_schedule import karras_sigmas
from components.diffusion.samplers import heun_step
from components.methods import build_method, distill, parse_distill_config
from components.methods.guided import guided_target, truncated_snr
from components.methods.progressive import halving_plan, halvings, stage_one, teacher_sigmas

SD = 0.5                                 # sigma_data: the Gaussian data below is N(0, SD^2 I)
TINY = dict(iterations=4, batch_size=16, seed=0, log_every=2, checkpoint_every=0, fid_every=0)


def exact_denoiser(x, t):
    """Data ~ N(0, SD^2 I): D(x, t) = SD^2 / (SD^2 + t^2) x."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return SD**2 / (SD**2 + t**2) * x


def exact_solution(x_t, t, s):
    """The probability-flow ODE's solution from t to s for that data: x_s = x_t sqrt((SD^2 + s^2) / (SD^2 + t^2))."""
    return x_t * ((SD**2 + s**2) / (SD**2 + t**2)) ** 0.5


def two_ddim_steps(x_t, t, t1, t2):
    x_t1 = ddim_step(x_t, exact_denoiser(x_t, t), t, t1)
    return ddim_step(x_t1, exact_denoiser(x_t1, t1), t1, t2)


def _x(n=4, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def guided_teacher(tiny_teacher):
    """A stage-1 student with a non-zero w embedding, sampled with DDIM on 4 Karras steps."""
    S = GuidedDenoiser.from_teacher(tiny_teacher).eval()
    with torch.no_grad():
        torch.manual_seed(0)
        for p in S.w_embed.parameters():
            p.add_(0.1 * torch.randn_like(p))
    S.sampling = {"sampler": "ddim", "sigmas": karras_sigmas(4, S.sigma_min, S.sigma_max).tolist()}
    return S


def test_the_two_step_target_is_the_exact_solution_up_to_the_solvers_error():
    """Two DDIM (Euler) steps with the exact denoiser approach the exact ODE solution at second order per
    step; the target x~ makes ONE DDIM step land exactly where the two steps did."""
    x_t = _x() * (SD**2 + 1.0) ** 0.5
    t = 1.0
    errors = []
    for h in (0.2, 0.1, 0.05):
        t1, t2 = t - h, t - 2 * h
        two = two_ddim_steps(x_t, t, t1, t2)
        errors.append(float((two - exact_solution(x_t, t, t2)).abs().max()))
        x_tilde = ddim_target(x_t, two, t, t2)
        assert torch.allclose(ddim_step(x_t, x_tilde, t, t2), two, atol=1e-12)     # one step = two steps
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5           # local error O(h^2)
    assert errors[2] < 1e-3 * float(x_t.abs().max())
    # the last step ends at 0: the target is the two steps' clean image itself
    two = two_ddim_steps(x_t, 0.3, 0.1, 0.0)
    assert torch.allclose(ddim_target(x_t, two, 0.3, 0.0), two)


def test_heun_two_step_target_is_closer_to_the_exact_solution_than_ddims():
    """teacher_solver heun: two Heun steps with the exact denoiser have local error O(h^3) (DDIM's is O(h^2)), the
    one-step target lands on them, and a Heun step to sigma 0 is the Euler (DDIM) step. Per-sample t works."""
    x_t = _x() * (SD**2 + 1.0) ** 0.5
    t, errors = 1.0, []
    for h in (0.2, 0.1, 0.05):
        t1, t2 = t - h, t - 2 * h
        two = heun_step(heun_step(x_t, t, t1, exact_denoiser), t1, t2, exact_denoiser)
        exact = exact_solution(x_t, t, t2)
        errors.append(float((two - exact).abs().max()))
        assert errors[-1] < 0.25 * float((two_ddim_steps(x_t, t, t1, t2) - exact).abs().max())
        assert torch.allclose(ddim_step(x_t, ddim_target(x_t, two, t, t2), t, t2), two, atol=1e-12)
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6                  # O(h^3)
    euler = ddim_step(x_t, exact_denoiser(x_t, 0.3), 0.3, 0.0)
    assert torch.allclose(heun_step(x_t, 0.3, 0.0, exact_denoiser), euler, rtol=0, atol=1e-12)
    ts = torch.tensor([1.0, 0.5, 0.3, 0.3], dtype=torch.float64)
    ss = torch.tensor([0.8, 0.2, 0.0, 0.1], dtype=torch.float64)
    batch = heun_step(x_t, ts, ss, exact_denoiser)
    for k in range(4):
        assert torch.allclose(batch[k:k + 1], heun_step(x_t[k:k + 1], float(ts[k]), float(ss[k]), exact_denoiser))


def test_the_ddim_step_is_the_euler_step_of_the_ode():
    """dx/dt = (x - D(x, t)) / t: one Euler step t -> s is x + (s - t)(x - D) / t = D + (s/t)(x - D)."""
    x_t, t, s = _x(), 2.0, 1.5
    D = exact_denoiser(x_t, t)
    assert torch.allclose(ddim_step(x_t, D, t, s), x_t + (s - t) * (x_t - D) / t, atol=1e-12)
    per_sample = torch.tensor([2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    out = ddim_step(x_t, D, per_sample, per_sample / 2)
    assert torch.allclose(out[1], ddim_step(x_t[1:2], D[1:2], 1.0, 0.5)[0])


def test_truncated_snr_weight():
    t = torch.tensor([0.25, 0.5, 2.0, 80.0])
    assert truncated_snr(t, SD).tolist() == pytest.approx([4.0, 1.0, 1.0, 1.0])      # SNR = SD^2 / t^2 = 4, 1, ...


def test_a_new_guided_student_is_the_conditional_teacher_and_takes_w_in_one_evaluation(tiny_teacher, guided_teacher):
    x, y = _x().float() * 3, torch.tensor([0, 1, 2, 3])
    S = GuidedDenoiser.from_teacher(tiny_teacher).eval()
    with torch.no_grad():
        for w in (0.0, 2.5):                               # the w embedding starts at zero
            assert torch.allclose(S.with_w(x, 3.0, y, w), tiny_teacher(x, 3.0, y), atol=1e-6)
        # a trained w embedding: w changes the prediction; guided(scale) is w = scale - 1
        a, b = guided_teacher.with_w(x, 3.0, y, 0.0), guided_teacher.with_w(x, 3.0, y, 2.0)
        assert not torch.allclose(a, b, atol=1e-4)
        assert torch.equal(guided_teacher.guided(x, 3.0, y, 3.0), b) and torch.equal(guided_teacher(x, 3.0, y), a)
    steps = len(guided_teacher.sampling["sigmas"]) - 1
    assert generate(guided_teacher, y, seed=0, guidance_scale=2.0).nfe == steps          # one NFE per step
    cfg_teacher = copy.copy(tiny_teacher)
    cfg_teacher.sampling = {"sampler": "ddim", "sigmas": [80.0, 0.0]}
    assert generate(cfg_teacher, y, seed=0, guidance_scale=2.0).nfe == 2                # CFG: two per step
    with pytest.raises(ConfigError, match="kind 'edm'"):
        GuidedDenoiser.from_teacher(guided_teacher)


def test_the_guided_target_is_the_cfg_teachers_prediction(tiny_teacher):
    x, y = _x().float() * 3, torch.tensor([0, 1, 2, 3])
    t = torch.full((4,), 3.0)
    w = torch.tensor([0.0, 1.0, 2.0, 4.0])
    target = guided_target(tiny_teacher, x, t, y, w)
    with torch.no_grad():
        for i in range(4):
            cfg = tiny_teacher.guided(x[i:i + 1], 3.0, y[i:i + 1], 1.0 + float(w[i]))
            assert torch.allclose(target[i:i + 1], cfg, atol=1e-5)


@pytest.mark.parametrize("solver", ["ddim", "heun"])
def test_a_progressive_student_that_hits_its_target_does_two_teacher_steps_in_one(guided_teacher, digits, solver):
    """teacher_solver ddim (the paper) or heun (ours): one DDIM step with the target lands on the teacher's two."""
    method = build_method(guided_teacher, {"method": "progressive", **TINY, "teacher_solver": solver}, digits)
    x, y = digits.split("train")[0][:4], digits.split("train")[1][:4]
    z, w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([0.0, 1.0, 2.0, 3.0])
    torch.manual_seed(0)
    z_t, t, x_tilde = method.target(x, y, z, w)
    levels = guided_teacher.sampling["sigmas"]
    for k in range(4):
        i = levels.index(pytest.approx(float(t[k]), rel=1e-6))
        assert i % 2 == 0                                       # the student starts on every other level
        t1, t2 = levels[i + 1], levels[i + 2]
        zk, yk, wk = z_t[k:k + 1], y[k:k + 1], float(w[k])
        D = lambda v, sig: guided_teacher.with_w(v, sig, yk, wk)     # noqa: E731
        with torch.no_grad():
            if solver == "heun":
                z2 = heun_step(heun_step(zk, levels[i], t1, D), t1, t2, D)
            else:
                z1 = ddim_step(zk, D(zk, levels[i]), levels[i], t1)
                z2 = ddim_step(z1, D(z1, t1), t1, t2)
        assert torch.allclose(ddim_step(zk, x_tilde[k:k + 1], levels[i], t2), z2, rtol=1e-4, atol=1e-3)
    student = method.student()
    assert student.sampling == {"sampler": "ddim", "sigmas": [round(v, 6) for v in levels[::2]]}


def test_the_chain_config_gives_each_halving_its_own_config_whatever_the_chain_end():
    """stage_one drops the chain keys and each halving names its own step count, so a chain asked for one more
    halving leaves stage 1's and the earlier halvings' configs (the pipeline's cache keys) unchanged."""
    short = parse_distill_config({"method": "guided", **TINY, "sampling_steps": 8, "target_steps": 4,
                                  "lr": 1e-3, "halving": {"iterations": 7, "lr": 5e-4}})
    longer = parse_distill_config({**short.model_dump(), "target_steps": 1})
    assert stage_one(short) == stage_one(longer) and "target_steps" not in stage_one(short)
    assert [n for n, _ in halvings(short)] == [4] and [n for n, _ in halvings(longer)] == [4, 2, 1]
    assert halvings(longer)[0] == halvings(short)[0]
    n, cfg = halvings(longer)[1]
    assert (cfg["method"], cfg["target_steps"], cfg["iterations"], cfg["lr"]) == ("progressive", 2, 7, 5e-4)
    assert cfg["batch_size"] == TINY["batch_size"] and cfg["w_max"] == short.w_max     # shared with stage 1
    assert halvings(parse_distill_config({"method": "guided", **TINY})) == []           # stage 1 only
    paper = parse_distill_config({**longer.model_dump(), "first_halving_solver": "ddim"})
    assert stage_one(paper) == stage_one(longer)                                         # stage 1 unchanged
    assert [c["teacher_solver"] for _, c in halvings(longer)] == ["heun", "ddim", "ddim"]    # the default
    assert [c["teacher_solver"] for _, c in halvings(paper)] == ["ddim"] * 3
    every = parse_distill_config({**longer.model_dump(), "first_halving_solver": None,
                                  "halving": {"teacher_solver": "heun"}})
    assert [c["teacher_solver"] for _, c in halvings(every)] == ["heun"] * 3


def test_the_chain_halves_the_guided_students_grid(tiny_teacher, digits):
    chain = parse_distill_config({"method": "guided", **TINY, "sampling_steps": 8, "target_steps": 2})
    stage1 = distill(m := build_method(tiny_teacher, stage_one(chain), digits), progress=False)
    assert all("loss_distill" in h for h in stage1)
    teacher = m.student()
    assert teacher.sampling["sampler"] == "ddim" and len(teacher.sampling["sigmas"]) == 9
    for steps, cfg in halvings(chain):
        m = build_method(teacher, cfg, digits)
        distill(m, progress=False)
        teacher = m.student()
        assert len(teacher.sampling["sigmas"]) == steps + 1
    assert teacher.sampling["sigmas"][0] == pytest.approx(80.0) and teacher.sampling["sigmas"][-1] == 0.0


def test_halving_bookkeeping_errors_name_the_field(tiny_teacher, guided_teacher, digits):
    assert halving_plan(16, 4) == [8, 4] and halving_plan(8, 1) == [4, 2, 1]
    for start, target, match in ((16, 3, "power of 2"), (16, 0, "below 1 step"), (4, 4, "nothing to halve")):
        with pytest.raises(ConfigError, match=f"distill.target_steps.*{match}"):
            halving_plan(start, target)
    odd = GuidedDenoiser.from_teacher(tiny_teacher)
    odd.sampling = {"sampler": "ddim", "sigmas": karras_sigmas(3, 0.002, 80.0).tolist()}
    with pytest.raises(ConfigError, match="3 DDIM step.*sampling_steps"):
        teacher_sigmas(odd)
    with pytest.raises(ConfigError, match="run distill.method guided first"):
        build_method(tiny_teacher, {"method": "progressive", **TINY}, digits)
    with pytest.raises(ConfigError, match="distill.w_max"):
        build_method(tiny_teacher, {"method": "guided", **TINY, "w_min": 2.0, "w_max": 1.0}, digits)


def test_w_zero_prob_puts_that_fraction_of_w_at_zero(tiny_teacher, digits):
    """w ~ U[w_min, w_max] with a fraction w_zero_prob set to exactly 0; at 0 (the default) the draws are the
    plain uniform ones, unchanged."""
    cfg = {"method": "guided", **TINY, "w_min": 0.5, "w_max": 2.0}
    plain = build_method(tiny_teacher, cfg, digits).sample_w(4000)
    assert plain.min() >= 0.5 and plain.max() <= 2.0 and not (plain == 0).any()
    again = build_method(tiny_teacher, {**cfg, "w_zero_prob": 0.0}, digits).sample_w(4000)
    assert torch.equal(plain, again)
    w = build_method(tiny_teacher, {**cfg, "w_zero_prob": 0.3}, digits).sample_w(4000)
    zero = w == 0
    assert abs(zero.float().mean().item() - 0.3) < 0.03
    assert torch.equal(w[~zero], plain[~zero])             # the others keep their uniform draws
    with pytest.raises(ConfigError, match="w_zero_prob"):
        parse_distill_config({"method": "guided", **TINY, "w_zero_prob": 1.5})


def test_save_and_load_keep_the_w_embedding(guided_teacher, tmp_path):
    save_denoiser(guided_teacher, tmp_path / "s")
    back = load_denoiser(tmp_path / "s")
    assert isinstance(back, GuidedDenoiser) and back.sampling == guided_teacher.sampling
    x, y = _x().float(), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        assert torch.equal(back.with_w(x, 1.0, y, 2.0), guided_teacher.with_w(x, 1.0, y, 2.0))
    (tmp_path / "s" / "w_embedding.safetensors").unlink()
    with pytest.raises(ConfigError, match="w_embedding.safetensors is missing"):
        load_denoiser(tmp_path / "s")


def test_the_guidance_sweep_scores_each_w_with_one_evaluation_per_student_step(tiny_teacher, digits):
    """metrics.evaluate.guidance_sweep: the CFG teacher pays two evaluations per step, a guided student one;
    a new student (zero w embedding) is the conditional teacher at every w, so its FID does not move with w
    while the teacher's does."""
    from components.config import EvalConfig, FeatureNetConfig
    from components.metrics import train_feature_net
    from components.metrics.evaluate import extractor_for, guidance_sweep, reference_features
    from components.viz import fid_vs_w

    net, _ = train_feature_net(FeatureNetConfig(dim=16, train_steps=30), digits, progress=False)
    cfg = EvalConfig(num_samples=60, batch_size=60)
    extractor = extractor_for(cfg, net)
    refs = reference_features(extractor, digits)
    recipe = {"sampler": "ddim", "sigmas": karras_sigmas(2, 0.002, 80.0).tolist()}
    teacher = copy.copy(tiny_teacher)
    teacher.sampling = recipe
    student = GuidedDenoiser.from_teacher(tiny_teacher).eval()
    student.sampling = recipe
    t_pts = guidance_sweep(teacher, "teacher", [0.0, 2.0], extractor, net, digits, refs, cfg, progress=False)
    s_pts = guidance_sweep(student, "student 2-step", [0.0, 2.0], extractor, net, digits, refs, cfg, progress=False)
    assert [(p["w"], p["nfe"]) for p in t_pts] == [(0.0, 2), (2.0, 4)]
    assert [(p["w"], p["nfe"]) for p in s_pts] == [(0.0, 2), (2.0, 2)]
    assert s_pts[0]["fid"] == pytest.approx(t_pts[0]["fid"], rel=1e-4)
    assert s_pts[1]["fid"] == pytest.approx(s_pts[0]["fid"], rel=1e-4) and t_pts[1]["fid"] != t_pts[0]["fid"]
    assert fid_vs_w(t_pts + s_pts).size[0] > 400


def test_the_export_keeps_w_an_input_and_onnxruntime_reproduces_the_ddim_sampler(guided_teacher, tmp_path):
    """export_student on a guided student: fewstep's folder (not a ConsistencyModelPipeline: no stock pipeline
    drives it, the card says so) and onnx/denoiser.onnx with w an input; the card's numpy DDIM loop
    (run_guided_onnx) gives the project sampler's images at any w."""
    import json

    import numpy as np

    from components.export import export_student
    from components.onnx_export import run_guided_onnx

    student = copy.deepcopy(guided_teacher)
    student.sampling = {"sampler": "ddim", "sigmas": karras_sigmas(2, student.sigma_min, student.sigma_max).tolist()}
    folder = export_student(student, tmp_path / "model", {"method": "guided", "class_names": list(range(10))})
    files = {p.name for p in folder.iterdir()}
    assert {"unet", "scheduler", "denoiser.json", "w_embedding.safetensors", "README.md", "onnx"} <= files
    assert "model_index.json" not in files
    card = (folder / "README.md").read_text()
    assert "Stock diffusers cannot sample it" in card and "guidance_scale=1 + 1.0" in card
    assert json.loads((folder / "denoiser.json").read_text())["sampling"] == student.sampling
    back = load_denoiser(folder)
    labels = torch.tensor([0, 3, 9, 10])                                   # the null class included
    for w in (0.0, 1.5):
        ours = generate(student, labels, seed=3, batch_size=4, guidance_scale=1 + w).images
        assert torch.equal(generate(back, labels, seed=3, batch_size=4, guidance_scale=1 + w).images, ours)
        c, s = student.unet.config.in_channels, student.unet.config.sample_size
        noise = torch.randn((4, c, s, s), generator=torch.Generator().manual_seed(3))   # generate()'s draw
        got = run_guided_onnx(folder / "onnx" / "denoiser.onnx", noise.numpy(), labels.numpy(),
                              student.sampling["sigmas"], w)
        assert float(np.abs(got - ours.numpy()).max()) <= 1e-4, w
    with pytest.raises(ConfigError, match="not empty"):
        export_student(student, folder, {})
