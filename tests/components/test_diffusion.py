import json

import pytest
import torch

from components.config import ConfigError
from components.diffusion import EDMDenoiser, VPDenoiser, get_sampler, karras_sigmas, load_denoiser, save_denoiser
from components.diffusion.generate import balanced_labels, generate
from components.nets import build_unet


def _edm(seed=0):
    torch.manual_seed(seed)
    return EDMDenoiser(build_unet(8, 1, 3, (16, 32), 1, 4), 3, 0.002, 80.0, 0.5).eval()


def test_karras_sigmas_decrease_and_end_in_zero():
    s = karras_sigmas(18, 0.002, 80.0)
    assert len(s) == 19 and s[-1] == 0
    assert torch.all(s[:-1] > s[1:])
    assert torch.isclose(s[0], torch.tensor(80.0)) and torch.isclose(s[-2], torch.tensor(0.002))


def test_edm_boundary_condition_is_identity_at_sigma_min():
    D = _edm()
    x = torch.randn(4, 1, 8, 8)
    out = D(x, D.sigma_min, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(out, x, atol=1e-6)


def test_guidance_scale_one_is_the_conditional_output():
    D = _edm()
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    assert torch.allclose(D.guided(x, 1.0, y, 1.0), D(x, 1.0, y))
    # scale 0 = unconditional (the null class)
    assert torch.allclose(D.guided(x, 1.0, y, 0.0), D(x, 1.0, torch.full_like(y, 3)), atol=1e-6)


@pytest.mark.parametrize("name", ["heun", "fewstep"])
def test_sampler_contract(name):
    """Every sampler: same shape/dtype out, finite, deterministic for one seed."""
    D = _edm()
    sampler = get_sampler(name)
    sigmas = karras_sigmas(3, 0.002, 80.0)
    y = torch.tensor([0, 1])
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(2, 1, 8, 8, generator=g) * sigmas[0]
        outs.append(sampler(D, x, sigmas, {"class_labels": y}, generator=g))
    assert outs[0].shape == (2, 1, 8, 8) and outs[0].dtype == torch.float32
    assert torch.isfinite(outs[0]).all()
    assert torch.equal(outs[0], outs[1])


def test_unknown_sampler():
    with pytest.raises(ValueError, match="valid: cascade, ddim, fewstep, gamma, heun"):
        get_sampler("euler_a")


def test_generate_counts_nfe_and_balances_classes():
    D = _edm()
    D.sampling = {"sampler": "heun", "sigmas": karras_sigmas(4, 0.002, 80.0).tolist()}
    labels = balanced_labels(9, 3)
    assert labels.bincount().tolist() == [3, 3, 3]
    out = generate(D, labels, seed=0, batch_size=5)
    assert out.nfe == 2 * 4 - 1
    assert out.images.shape == (9, 1, 8, 8) and out.images.abs().max() <= 1
    D.sampling = {"sampler": "fewstep", "sigmas": [80.0, 0.0]}
    assert generate(D, labels, seed=0).nfe == 1


def test_generate_samples_in_eval_mode():
    """generate puts a denoiser in eval mode when it, or only one submodule, is training (and leaves it so)."""
    D = _edm()
    D.sampling = {"sampler": "fewstep", "sigmas": [80.0, 0.0]}
    labels = balanced_labels(3, 3)
    reference = generate(D, labels, seed=0).images
    for training in (D, D.unet.down_blocks[0]):
        training.train()
        assert any(m.training for m in D.modules())
        assert torch.equal(generate(D, labels, seed=0).images, reference)
        assert not any(m.training for m in D.modules())


def test_edm_save_load_roundtrip(tmp_path):
    D = _edm()
    D.sampling = {"sampler": "heun", "sigmas": [80.0, 1.0, 0.0]}
    save_denoiser(D, tmp_path / "m")
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    sched = json.loads((tmp_path / "m" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "CMStochasticIterativeScheduler"
    back = load_denoiser(tmp_path / "m")
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    assert isinstance(back, EDMDenoiser) and back.sampling == D.sampling
    assert torch.allclose(back(x, 2.0, y), D(x, 2.0, y), atol=1e-6)


def test_user_ddpm_teacher_folder_loads_as_vp_denoiser(tmp_path):
    """A stock diffusers UNet2DModel + DDPMScheduler folder (epsilon prediction) is a Denoiser."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = build_unet(8, 1, 3, (16, 32), 1, 4)
    unet.save_pretrained(tmp_path / "t" / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "t" / "scheduler")
    D = load_denoiser(tmp_path / "t")
    assert isinstance(D, VPDenoiser) and D.num_classes == 3
    x, y, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([0.5, 3.0])
    # epsilon prediction: D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))
    eps = D.unet(x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt(), D.sigma_to_t(sigma), class_labels=y).sample
    assert torch.allclose(D(x, sigma, y), x - sigma.view(-1, 1, 1, 1) * eps, atol=1e-5)
    # t(sigma) inverts the scheduler's own sigma_t at the grid points
    grid = ((1 - D.alphas_cumprod) / D.alphas_cumprod).sqrt()
    assert torch.allclose(D.sigma_to_t(grid[[3, 50, 97]]), torch.tensor([3.0, 50.0, 97.0]), atol=1e-3)


def test_missing_teacher_folder_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_denoiser(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match="missing unet/config.json"):
        load_denoiser(tmp_path / "half")
