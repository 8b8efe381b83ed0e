"""Contract tests every method passes, plus DMD2's own equations."""
import math

import pytest
import torch

from components.config import ConfigError
from components.methods import METHODS, build_method, distill
from components.methods.dmd2 import distribution_matching_loss

TINY = dict(iterations=8, batch_size=16, seed=0, log_every=4)


def _params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tiny_teacher, digits):
    method = build_method(tiny_teacher, {"method": name, **TINY}, digits)
    history = distill(method, progress=False)
    assert history and history[-1]["iteration"] == TINY["iterations"]
    assert all(math.isfinite(v) for h in history for v in h.values())
    student = method.student()
    assert student.sampling["sampler"] in ("fewstep", "heun")
    assert not any(p.requires_grad for p in student.parameters())
    # the student moved away from the teacher
    assert not torch.allclose(_params(student), _params(tiny_teacher))
    state = method.state_dict()
    assert isinstance(state, dict) and "step" in state and state["step"] == TINY["iterations"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_is_seed_deterministic(name, tiny_teacher, digits):
    runs = []
    for _ in range(2):
        m = build_method(tiny_teacher, {"method": name, **TINY}, digits)
        distill(m, progress=False)
        runs.append(_params(m.student()))
    assert torch.equal(runs[0], runs[1])
    m = build_method(tiny_teacher, {"method": name, **{**TINY, "seed": 1}}, digits)
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
    m = build_method(tiny_teacher, {"method": "dmd2", "iterations": 60, "batch_size": 32, "seed": 0,
                                    "log_every": 20, "dfake_gen_update_ratio": 1000, "lr_fake": 1e-3}, digits)
    h = distill(m, progress=False)
    assert h[-1]["loss_fake"] < h[0]["loss_fake"]


def test_dmd2_refuses_multistep_for_now(tiny_teacher, digits):
    with pytest.raises(ConfigError, match="student_steps"):
        build_method(tiny_teacher, {"method": "dmd2", "student_steps": 4}, digits)
