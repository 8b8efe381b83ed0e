"""LowDiff (components/methods/lowdiff.py, components/diffusion/cascade.py): the resolution pair, the start of a
level, the resolution embedding, a one-level cascade = the ordinary sampler, the folder round trip, bad configs."""
import math

import pytest
import torch

from components.config import ConfigError
from components.diffusion import karras_sigmas, load_denoiser, sample_heun, save_denoiser
from components.diffusion.cascade import (
    CascadeDenoiser,
    cascade_recipe,
    downsample,
    full_resolution_nfe,
    level_nfe,
    noise_downsample,
    sample_cascade,
    start_level,
    upsample,
)
from components.diffusion.generate import balanced_labels, generate
from components.methods import build_method, distill
from components.methods.lowdiff import build_cascade, full_resolution_fraction, level_sizes, truncated_sigmas

TINY = dict(method="lowdiff", iterations=4, batch_size=16, log_every=2, checkpoint_every=0, fid_every=0,
            resolutions=[4, 8], steps=[3, 2], start_sigma=[1.0])


@pytest.fixture(scope="module")
def cascade(tiny_teacher, digits):
    from components.methods.lowdiff import LowDiffConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_cascade(tiny_teacher, LowDiffConfig(**TINY), digits).eval()


@pytest.mark.parametrize("factor", [2, 4])
def test_downsampling_an_upsampled_image_returns_it(factor):
    x = torch.randn(3, 2, 4, 4)
    up = upsample(x, factor)
    assert up.shape == (3, 2, 4 * factor, 4 * factor)
    assert torch.allclose(downsample(up, factor), x, rtol=0, atol=1e-6)     # exact up to float rounding


def test_pooled_noise_stays_standard_normal():
    z = noise_downsample(torch.randn(4000, 1, 8, 8, generator=torch.Generator().manual_seed(0)), 4)
    assert z.shape == (4000, 1, 2, 2)
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03


def test_the_start_of_a_level_is_the_forward_marginal_around_the_upsampled_image():
    """x_start = up(x_low) + sigma n: around up, mean 0 and std sigma per pixel, independent of x_low."""
    x_low = torch.rand(2000, 1, 4, 4) * 2 - 1
    sigma = 0.7
    x, up = start_level(x_low, 8, sigma, torch.Generator().manual_seed(1))
    assert torch.equal(up, upsample(x_low, 2))
    d = x - up
    assert abs(float(d.mean())) < 0.01 and abs(float(d.std()) - sigma) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([d.flatten(), up.flatten()]))[0, 1])) < 0.02
    again, _ = start_level(x_low, 8, sigma, torch.Generator().manual_seed(1))
    assert torch.equal(again, x)


def test_the_resolution_embedding_tells_the_levels_apart(cascade):
    e4, e8 = cascade.resolution_embedding(4, 2), cascade.resolution_embedding(8, 2)
    assert e4.shape == e8.shape and not torch.allclose(e4, e8, atol=1e-4)
    # the same 8x8 input read as another level (a 4x4 crop is level 0) gives another output through e(r):
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    out = cascade(x, 1.0, y, lowres=torch.zeros_like(x))
    emb = cascade.unet.time_embedding
    cascade.resolution_embedding = lambda r, n, device=None: e4        # noqa: E731  (pretend level 0's embedding)
    try:
        other = cascade(x, 1.0, y, lowres=torch.zeros_like(x))
    finally:
        del cascade.resolution_embedding
    assert emb.extra_embedding is None
    assert not torch.allclose(out, other, atol=1e-5)


def test_a_level_above_the_first_needs_its_low_resolution_input(cascade):
    with pytest.raises(ValueError, match="needs the upsampled level below"):
        cascade(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not one of its levels"):
        cascade(torch.randn(2, 1, 6, 6), 1.0, torch.tensor([0, 1]))


def test_a_one_level_cascade_is_exactly_the_ordinary_heun_sampler(tiny_teacher, digits):
    from components.methods.lowdiff import LowDiffConfig

    one = build_cascade(tiny_teacher, LowDiffConfig(**{**TINY, "resolutions": [8], "steps": [4], "start_sigma": []}),
                        digits).eval()
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * one.sigma_max
    y = torch.arange(5)
    recipe = cascade_recipe([8], [4], [], one.sigma_max)
    got = sample_cascade(one, x, torch.tensor(recipe["sigmas"]), {"class_labels": y, **recipe},
                         generator=torch.Generator().manual_seed(3))
    want = sample_heun(one, x, karras_sigmas(4, one.sigma_min, one.sigma_max), {"class_labels": y})
    assert torch.equal(got, want)


def test_cascade_sampling_runs_each_level_and_counts_its_evaluations(cascade):
    cascade.sampling = cascade_recipe([4, 8], [3, 2], [1.0], cascade.sigma_max)
    gen = generate(cascade, balanced_labels(6, 10), seed=0)
    assert gen.images.shape == (6, 1, 8, 8) and torch.isfinite(gen.images).all()
    assert level_nfe(cascade.sampling) == [5, 3] and gen.nfe == 8
    assert full_resolution_nfe(cascade.sampling) == pytest.approx(5 / 4 + 3)
    assert torch.equal(generate(cascade, balanced_labels(6, 10), seed=0).images, gen.images)


def test_a_cascade_folder_round_trips(cascade, tmp_path):
    save_denoiser(cascade, tmp_path / "c")
    back = load_denoiser(tmp_path / "c")
    assert isinstance(back, CascadeDenoiser) and back.resolutions == [4, 8] and back.sampling == cascade.sampling
    labels = balanced_labels(4, 10)
    assert torch.equal(generate(back, labels, seed=1).images, generate(cascade, labels, seed=1).images)
    (tmp_path / "c" / "res_embedding.safetensors").unlink()
    with pytest.raises(ConfigError, match="not a LowDiff cascade folder"):
        load_denoiser(tmp_path / "c")


def test_training_trains_every_level_and_resumes_exactly(tiny_teacher, digits, tmp_path):
    cfg = {**TINY, "checkpoint_every": 2, "checkpoint_dir": str(tmp_path)}
    full = build_method(tiny_teacher, cfg, digits)
    history = distill(full, progress=False)
    assert {"loss_4px", "loss_8px"} <= set(history[-1]) and all(math.isfinite(v) for v in history[-1].values())
    half = build_method(tiny_teacher, {**cfg, "iterations": 2, "checkpoint_dir": str(tmp_path / "b")}, digits)
    distill(half, progress=False)
    resumed = build_method(tiny_teacher, {**cfg, "checkpoint_dir": str(tmp_path / "b")}, digits)
    distill(resumed, progress=False)
    a, b = full.student().state_dict(), resumed.student().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_levels_above_the_first_train_below_their_start_noise():
    u = torch.rand(10000, generator=torch.Generator().manual_seed(0))
    capped = truncated_sigmas(u, -1.2, 1.2, 0.5)
    assert float(capped.max()) <= 0.5 + 1e-6
    free = truncated_sigmas(u, -1.2, 1.2, 1e9)                   # no cap: the EDM log-normal itself
    assert abs(float(free.log().mean()) + 1.2) < 0.05 and abs(float(free.log().std()) - 1.2) < 0.05


def test_batch_shares_and_budget():
    assert level_sizes(16, [1, 1]) == [8, 8] and level_sizes(7, [1, 2]) == [2, 5] and sum(level_sizes(9, [1, 1, 1])) == 9
    assert full_resolution_fraction([8, 16]) == pytest.approx(0.625)
    assert full_resolution_fraction([16]) == 1.0


@pytest.mark.parametrize("override, field, says", [
    ({"resolutions": [8, 4]}, "distill.resolutions", "must increase"),
    ({"resolutions": [4, 6]}, "distill.resolutions", "must increase"),
    ({"resolutions": [2, 4]}, "distill.resolutions", "the cascade must end at the data's resolution"),
    ({"resolutions": [3, 6], "steps": [1, 1]}, "distill.resolutions", "end at the data's resolution"),
    ({"resolutions": [1, 8]}, "distill.resolutions", "cannot take a 1x1 input"),
    ({"start_sigma": [100.0]}, "distill.start_sigma", "outside the schedule"),
    ({"start_sigma": [0.001]}, "distill.start_sigma", "outside the schedule"),
    ({"start_sigma": []}, "distill.start_sigma", "one start noise per level above the first"),
    ({"steps": [3]}, "distill.steps", "one Heun step count >= 1 per level"),
    ({"level_weights": [1.0]}, "distill.level_weights", "one weight >= 0 per level"),
    ({"train_sigma_max": [0.5]}, "distill.train_sigma_max", r"must lie in \[start_sigma 1.0"),
    ({"train_sigma_max": [2.0, 3.0]}, "distill.train_sigma_max", "one noise level per level above the first"),
    ({"resolutions": [8], "steps": [3], "start_sigma": [], "train_sigma_max": [2.0]}, "distill.train_sigma_max",
     "one noise level per level above the first"),
])
def test_bad_cascade_configs_name_the_field(tiny_teacher, digits, override, field, says):
    with pytest.raises(ConfigError, match=rf"'{field}'.*{says}") as err:
        build_method(tiny_teacher, {**TINY, **override}, digits)
    assert "\n" not in str(err.value)


def test_the_export_is_fewsteps_folder_with_a_three_line_loader(cascade, tmp_path):
    """No stock diffusers pipeline drives a cascade: the export is fewstep's folder, the card says so and gives the
    loader; the folder samples as the cascade does."""
    from components.export import export_student

    cascade.sampling = cascade_recipe([4, 8], [3, 2], [1.0], cascade.sigma_max)
    out = export_student(cascade, tmp_path / "export", {"name": "tiny cascade", "metrics": {"fid": 12.5}}, onnx=False)
    names = {p.name for p in out.iterdir()}
    assert {"cascade.json", "res_embedding.safetensors", "unet", "README.md"} <= names and "model_index.json" not in names
    card = (out / "README.md").read_text()
    assert "Stock diffusers cannot drive it" in card and 'load_denoiser("<this folder>")' in card
    assert "No ONNX copy" in card and "onnx" not in names
    assert "| 4x4 | 80 | 3 | 5 |" in card and "| 8x8 | 1 | 2 | 3 |" in card
    labels = balanced_labels(4, 10)
    assert torch.equal(generate(load_denoiser(out), labels, seed=2).images, generate(cascade, labels, seed=2).images)


def test_onnx_per_level_reproduces_the_cascade_sampler(cascade, tmp_path):
    """onnx/level_<r>.onnx per level; the numpy sampler over them (the model card's) matches the project's cascade
    sampler on the same noise to 1e-4."""
    pytest.importorskip("onnxruntime")
    from components.onnx_export import export_cascade_onnx, run_cascade_onnx

    cascade.sampling = cascade_recipe([4, 8], [3, 2], [1.0], cascade.sigma_max)
    paths = export_cascade_onnx(cascade, tmp_path / "onnx")
    assert [p.name for p in paths] == ["level_4.onnx", "level_8.onnx"]
    labels = torch.tensor([0, 3, 7])
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 1, 8, 8, generator=g)
    level_noise = torch.randn(3, 1, 8, 8, generator=g)          # what sample_cascade draws next from the same g
    g = torch.Generator().manual_seed(5)
    torch.randn(3, 1, 8, 8, generator=g)
    recipe = cascade.sampling
    want = sample_cascade(cascade, z * recipe["sigmas"][0], torch.tensor(recipe["sigmas"]),
                          {"class_labels": labels, **recipe}, generator=g).clamp(-1, 1)
    got = run_cascade_onnx(tmp_path / "onnx", recipe, z.numpy(), [level_noise.numpy()], labels.numpy(),
                           cascade.sigma_min)
    assert got.shape == (3, 1, 8, 8)
    assert float((torch.from_numpy(got) - want).abs().max()) < 1e-4
