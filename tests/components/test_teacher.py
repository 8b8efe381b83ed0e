import torch

from components.config import ConfigError, TeacherConfig
from components.diffusion import save_denoiser
from components.diffusion.losses import edm_loss
from components.teacher import build_teacher, get_teacher


def test_edm_loss_decreases_on_a_fixed_batch(digits):
    """Toy problem: 40 Adam steps on one fixed batch/noise/sigma must reduce the EDM loss."""
    torch.manual_seed(0)
    D = build_teacher(TeacherConfig(block_out_channels=(16, 32), norm_num_groups=4), 10, 1, 8)
    x, y = digits.images[:32], digits.labels[:32]
    sigma, noise = torch.rand(32).exp(), torch.randn(32, 1, 8, 8)
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    first = edm_loss(D, x, y, sigma, noise).mean().item()
    for _ in range(40):
        loss = edm_loss(D, x, y, sigma, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_trained_teacher_has_heun_recipe(tiny_teacher, tiny_teacher_cfg):
    assert tiny_teacher.sampling["sampler"] == "heun"
    assert len(tiny_teacher.sampling["sigmas"]) == tiny_teacher_cfg.sampler_steps + 1
    assert tiny_teacher.num_classes == 10


def test_load_teacher_folder_and_mismatch(tmp_path, digits, digits_npz, tiny_teacher, tiny_teacher_cfg):
    save_denoiser(tiny_teacher, tmp_path / "t")
    loaded, losses = get_teacher(tiny_teacher_cfg.model_copy(update={"path": str(tmp_path / "t")}), digits)
    assert losses is None
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    assert torch.allclose(loaded(x, 1.0, y), tiny_teacher(x, 1.0, y), atol=1e-6)
    from components.config import DataConfig
    from components.data import load_dataset

    rgb = load_dataset(DataConfig(path=digits_npz, channels=3))
    try:
        get_teacher(tiny_teacher_cfg.model_copy(update={"path": str(tmp_path / "t")}), rgb)
        raise AssertionError("expected a mismatch error")
    except ConfigError as e:
        assert "teacher.path" in str(e) and "channels" in str(e)
