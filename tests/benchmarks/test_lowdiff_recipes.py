"""benchmarks/lowdiff_recipes.py's two diagnostics on a tiny cascade: the lowest level alone is the cascade sampler's
first level, and the top level run from given low-resolution images refines those images (not others)."""
import torch

from benchmarks.lowdiff_recipes import generate_low, refine_real
from components.diffusion.cascade import cascade_recipe, sample_cascade, upsample
from components.diffusion.generate import balanced_labels


def _cascade(tiny_teacher, digits):
    from components.methods.lowdiff import LowDiffConfig, build_cascade

    cfg = LowDiffConfig(method="lowdiff", iterations=1, batch_size=8, resolutions=[4, 8], steps=[3, 2],
                        start_sigma=[1.0], checkpoint_every=0, fid_every=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_cascade(tiny_teacher, cfg, digits).eval()


def test_the_lowest_level_alone_is_the_cascade_samplers_first_level(tiny_teacher, digits):
    model = _cascade(tiny_teacher, digits)
    labels = balanced_labels(6, 10)
    low = generate_low(model, labels, seed=3, steps=3, batch=6)
    recipe = cascade_recipe([4, 8], [3, 2], [1.0], model.sigma_max)
    g = torch.Generator().manual_seed(3)
    z = torch.randn((6, *model.image_shape), generator=g)       # what generate draws for the same seed
    levels = []
    sample_cascade(model, z * model.sigma_max, torch.tensor(recipe["sigmas"]), {"class_labels": labels, **recipe},
                   generator=g, callback=lambda d: levels.append(d["x"]))
    assert low.shape == (6, 1, 4, 4)
    assert torch.allclose(low, levels[0].clamp(-1, 1), atol=1e-4)        # float rounding of another call order


def test_refining_real_images_starts_from_those_images(tiny_teacher, digits):
    model = _cascade(tiny_teacher, digits)
    labels = balanced_labels(6, 10)
    x_low = torch.rand((6, 1, 4, 4)) * 1.6 - 0.8
    # from (almost) no noise the top level returns its start: the given images upsampled
    gen = refine_real(model, x_low, labels, seed=0, steps=2, sigma_start=model.sigma_min * 1.001)
    assert gen.images.shape == (6, 1, 8, 8) and gen.nfe == 3
    assert torch.allclose(gen.images, upsample(x_low, 2), atol=1e-2)
    other = refine_real(model, -x_low, labels, seed=0, steps=2, sigma_start=model.sigma_min * 1.001)
    assert not torch.allclose(other.images, gen.images, atol=1e-2)


def test_the_page_summarises_over_training_seeds_and_re_renders_from_its_json(tmp_path):
    from benchmarks import lowdiff_recipes as lr

    rows = [{"model": lr.BASELINE_ROW, "train_seed": s, "recipe": "as trained (8 at 16x16)", "fre_nfe": 15.0,
             "fid": f, "class_acc": 0.8, "nfe": 15} for s, f in ((0, 6.0), (1, 8.0))]
    rows += [{"model": lr.CASCADE_ROW, "train_seed": s, "recipe": "8 at 8x8, 4 at 16x16 from 1 (as trained)",
              "fre_nfe": 10.75, "fid": f, "class_acc": 0.7, "nfe": 22} for s, f in ((0, 14.0), (1, 15.0))]
    timing = {"baseline": 60.0, "8 at 8x8, 4 at 16x16 from 1 (as trained)": 90.0}
    summary = lr.summarize(rows, timing)
    assert [(r["fid"], r["seeds"]) for r in summary] == [(7.0, 2), (14.5, 2)]
    result = {"rows": rows, "summary": summary, "timing_images_per_s_b256": timing, "args": {},
              "protocol": {"samples": 10, "sample_seed": 0, "feature_net": "f", "reference": "r"},
              "provenance": {"started_utc": "a", "finished_utc": "b", "machine": "m", "commit": "c", "argv": []}}
    page = tmp_path / "recipes.md"
    lr.write_page(result, page)
    text = page.read_text()
    assert "| 14.50 +- 0.50 | 2.07 |" in text and "| 90 | 1.50 |" in text
    page.write_text("stale")
    lr.main(["--from-json", "--write-docs", str(page)])
    assert page.read_text() == text
