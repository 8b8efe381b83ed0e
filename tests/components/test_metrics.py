import numpy as np
import pytest
import scipy.linalg
import torch

from components.config import FeatureNetConfig
from components.diffusion.generate import Generated
from components.metrics import FeatureNet, feature_stats, fid, train_feature_net
from components.metrics.evaluate import real_floor, reference_features, score_samples
from components.metrics.extractors import DatasetFeatures
from components.viz import loss_curve, sample_grid


def _direct_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_direct_formula_and_is_zero_on_itself():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 8)), rng.normal(0.3, 1.2, size=(400, 8))
    sa, sb = feature_stats(a, "a"), feature_stats(b, "b")
    r = fid(sa, sb, "toy")
    assert r.fid == pytest.approx(_direct_fid(a, b), rel=1e-4)
    assert fid(sa, sa, "toy").fid == pytest.approx(0.0, abs=1e-6)
    assert (r.feature_net, r.reference, r.num_reference, r.num_samples) == ("toy", "b", 400, 500)


def test_feature_stats_refuse_nan():
    with pytest.raises(ValueError, match="NaN"):
        feature_stats(np.array([[0.0, np.nan], [1.0, 2.0]]), "bad")


@pytest.fixture(scope="module")
def feature_net(digits):
    net, info = train_feature_net(FeatureNetConfig(dim=32, train_steps=150), digits, progress=False)
    return net, info


def test_feature_net_learns_digits(feature_net):
    net, info = feature_net
    assert info["eval_accuracy"] > 0.8


def test_class_accuracy_is_the_share_of_real_images_given_their_own_label(feature_net, digits):
    """One helper scores the real images for the feature net's report, the teacher evaluation and the
    leaderboard: it counts the head's hits per split, and wrong labels lower it."""
    import dataclasses

    from components.metrics import class_accuracy

    net, info = feature_net
    assert class_accuracy(net, digits) == info["eval_accuracy"]
    x, y = digits.split("train")
    assert class_accuracy(net, digits, "train") == pytest.approx(float((net(x).argmax(1) == y).float().mean()))
    shifted = dataclasses.replace(digits, labels=(digits.labels + 1) % digits.num_classes)
    assert class_accuracy(net, shifted) < 0.3


def test_feature_net_roundtrip(tmp_path, feature_net, digits):
    net, _ = feature_net
    net.save_pretrained(tmp_path / "f")
    back = FeatureNet.from_pretrained(tmp_path / "f")
    x = digits.images[:10]
    assert torch.allclose(back.embed(x)[0], net.embed(x)[0])


def test_real_images_score_near_floor_and_noise_scores_badly(feature_net, digits):
    net, _ = feature_net
    ex = DatasetFeatures(net)
    refs = reference_features(ex, digits)
    x_tr, y_tr = digits.split("train")
    floor = real_floor(refs, len(x_tr))["fid"]          # every train image once: the whole split's statistics
    boot = real_floor(refs, 3 * len(x_tr), seed=1)      # the run's sample count, more than the split holds
    assert boot["num_samples"] == 3 * len(x_tr) and "with replacement" in boot["samples"]
    assert boot["fid"] != floor and abs(boot["fid"] - floor) < 0.5 * floor
    real = Generated(x_tr, y_tr, nfe=0, seconds=1.0)
    noise = Generated(torch.rand_like(x_tr) * 2 - 1, y_tr, nfe=0, seconds=1.0)
    m_real, _ = score_samples(real, "real", ex, net, refs)
    m_noise, _ = score_samples(noise, "noise", ex, net, refs)
    assert m_real["fid"] == pytest.approx(floor, rel=1e-6)
    assert m_noise["fid"] > 10 * max(floor, 0.1)
    assert m_real["class_acc"] > 0.8 and m_noise["class_acc"] < 0.5
    assert m_real["kid"] is None and m_noise["kid"] is None       # KID: Inception features only
    assert m_real["nonfinite_samples"] == 0 and m_real["throughput"] == pytest.approx(len(x_tr))


def test_nan_samples_are_counted_not_scored(feature_net, digits):
    net, _ = feature_net
    ex = DatasetFeatures(net)
    refs = reference_features(ex, digits)
    x = digits.images[:20].clone()
    x[3] = float("nan")
    x[7, 0, 0, 0] = float("inf")
    m, feats = score_samples(Generated(x, digits.labels[:20], 1, 1.0), "student", ex, net, refs)
    assert feats is None and m["nonfinite_samples"] == 2 and np.isnan(m["fid"]) and m["kid"] is None


def test_pictures(digits):
    img = sample_grid(digits.images[:200], digits.labels[:200], 10, per_class=5)
    assert img.size[0] > 5 * 8 and img.size[1] > 10 * 8
    curve = loss_curve([{"iteration": 1, "loss_a": 1.0}, {"iteration": 2, "loss_a": 0.5}], "t")
    assert curve.size[0] > 100


def test_feature_net_augmentation_shifts_within_the_bound_and_is_seeded(digits):
    from components.metrics.features import augment

    x = digits.images[:16]
    assert augment(x, 0, 0.0, torch.Generator().manual_seed(0)) is x
    a = augment(x, 1, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment(x, 1, 0.0, torch.Generator().manual_seed(0)))
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    H = x.shape[-1]
    for i in range(len(x)):      # every image is the original moved by at most one pixel, background filled in
        assert any(torch.equal(a[i], pad[i, :, dy:dy + H, dx:dx + H]) for dy in range(3) for dx in range(3))
    assert not torch.equal(a, x)
    noisy = augment(x, 0, 0.2, torch.Generator().manual_seed(0))
    assert 0.15 < float((noisy - x).std()) < 0.25
