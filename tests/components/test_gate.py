import copy

import pytest
import torch

from components.config import ConfigError, EvalConfig, FeatureNetConfig, GateConfig
from components.params import resolve_config
from components.gate import decide
from components.metrics import train_feature_net
from components.metrics.evaluate import evaluate_student_model, evaluate_teacher_model, reference_features
from components.metrics.extractors import DatasetFeatures
from components.teacher import build_teacher

GOOD = {"student_fid": 20.0, "teacher_fid": 18.0, "student_class_acc": 0.97, "real_floor_fid": 13.6,
        "real_class_acc": 0.97}


def test_a_good_student_passes_and_is_promoted():
    d = decide(GateConfig(fid_max=30, fid_ratio_max=2.0, class_acc_min=0.9), GOOD, production_fid=21.0)
    assert d.passed and d.promote_to == "staging" and not d.reasons
    assert {c["rule"] for c in d.checks} >= {"FID ceiling", "FID ratio to teacher", "excess FID ratio to teacher",
                                             "class accuracy floor", "no worse than production"}
    excess = next(c for c in d.checks if c["rule"] == "excess FID ratio to teacher")
    assert excess["value"] == pytest.approx((20.0 - 13.6) / (18.0 - 13.6))


@pytest.mark.parametrize("cfg, metrics, production, rule", [
    (GateConfig(fid_max=15), GOOD, None, "FID ceiling"),
    (GateConfig(fid_ratio_max=1.05), GOOD, None, "FID ratio to teacher"),
    # raw ratio 1.11 passes 1.2; above the floor the student is 1.45x as far as the teacher
    (GateConfig(fid_ratio_max=1.2, excess_fid_ratio_max=1.2), GOOD, None, "excess FID ratio to teacher"),
    (GateConfig(class_acc_min=0.99), GOOD, None, "class accuracy floor"),
    # the default floor: 0.9 x the real eval images' 0.97 = 0.873
    (GateConfig(), {**GOOD, "student_class_acc": 0.87}, None, "class accuracy floor, relative to real images"),
    (GateConfig(), GOOD, 19.5, "no worse than production"),
    (GateConfig(), {**GOOD, "student_fid": float("nan")}, None, "student samples finite"),
])
def test_each_rule_rejects_on_its_own(cfg, metrics, production, rule):
    d = decide(cfg, metrics, production)
    assert not d.passed and d.promote_to is None
    assert [r.split(":")[0] for r in d.reasons] == [rule]
    assert rule in d.summary() and "REJECTED" in d.summary()


def test_the_relative_class_floor_follows_the_dataset():
    """One default for every dataset: a Fashion-MNIST student at 0.84 passes where real images score 0.888 (an
    absolute 0.9 rejected it), and the same 0.84 fails where real images score 0.97 (the digits)."""
    fashion = {**GOOD, "student_class_acc": 0.84, "real_class_acc": 0.888}
    assert decide(GateConfig(), fashion).passed
    assert not decide(GateConfig(class_acc_min=0.9, class_acc_min_real=None), fashion).passed
    assert not decide(GateConfig(), {**fashion, "real_class_acc": 0.97}).passed
    check = next(c for c in decide(GateConfig(), fashion).checks if c["rule"].endswith("relative to real images"))
    assert check["threshold"] == pytest.approx(0.9 * 0.888)
    with pytest.raises(ValueError, match=r"gate\.class_acc_min_real: .*no real_class_acc"):
        decide(GateConfig(), {k: v for k, v in GOOD.items() if k != "real_class_acc"})
    assert decide(GateConfig(class_acc_min_real=None), {k: v for k, v in GOOD.items() if k != "real_class_acc"}).passed


def test_excess_ratio_of_a_teacher_at_the_floor():
    from components.metrics.summary import excess_fid_ratio

    assert excess_fid_ratio(2.0, 4.0) == 0.5
    assert excess_fid_ratio(-0.1, -0.2) == 0.0 and excess_fid_ratio(0.5, 0.0) == float("inf")
    at_floor = {**GOOD, "teacher_fid": 13.0}             # teacher within the floor's noise, student above it
    assert not decide(GateConfig(excess_fid_ratio_max=100.0), at_floor).passed


def test_inconsistent_thresholds_are_errors(digits_npz):
    with pytest.raises(ConfigError, match=r"'gate': every rule is off"):
        resolve_config(data={"path": digits_npz}, gate={"excess_fid_ratio_max": None, "beat_production": False,
                                                        "class_acc_min": None, "class_acc_min_real": None})
    with pytest.raises(ConfigError, match=r"gate\.promote_to"):
        resolve_config(data={"path": digits_npz}, gate={"excess_fid_ratio_max": None, "beat_production": False,
                                                        "class_acc_min": 0.5, "promote_to": "production"})
    with pytest.raises(ConfigError, match=r"gate\.fid_max.*below the real-data floor"):
        decide(GateConfig(fid_max=5.0), GOOD)


@pytest.fixture(scope="module")
def scored(digits, tiny_teacher):
    net, _ = train_feature_net(FeatureNetConfig(dim=16, train_steps=150), digits, progress=False)
    ev = EvalConfig(num_samples=200, batch_size=200, teacher_nfe_steps=(), latency_repeats=2, agreement_samples=20)
    refs = reference_features(DatasetFeatures(net), digits)
    teacher_m, teacher_feats, _ = evaluate_teacher_model(tiny_teacher, digits, net, refs, ev, progress=False)
    return net, ev, refs, teacher_m, teacher_feats


def test_an_untrained_student_is_rejected(digits, tiny_teacher, tiny_teacher_cfg, scored):
    net, ev, refs, teacher_m, teacher_feats = scored
    torch.manual_seed(0)
    untrained = build_teacher(tiny_teacher_cfg, digits.num_classes, 1, 8)
    untrained.sampling = {"sampler": "fewstep", "sigmas": [untrained.sigma_max, 0.0]}
    metrics, _ = evaluate_student_model(untrained, tiny_teacher, digits, net, refs, teacher_m, teacher_feats, ev,
                                        progress=False)
    d = decide(GateConfig(fid_max=metrics["real_floor_fid"] * 5, class_acc_min=0.5), metrics)
    assert not d.passed
    assert any(r.startswith("FID ceiling") for r in d.reasons)
    assert any(r.startswith("class accuracy floor") for r in d.reasons)
    # the same rules pass the real eval images scored as if generated (a sanity bound on the gate itself)
    real = copy.deepcopy(metrics)
    real.update(student_fid=metrics["real_floor_fid"], student_class_acc=1.0)
    assert decide(GateConfig(fid_max=metrics["real_floor_fid"] * 5, class_acc_min=0.5, fid_ratio_max=None), real).passed


def test_a_student_that_samples_nan_is_rejected_with_the_reason(digits, tiny_teacher, scored):
    net, ev, refs, teacher_m, teacher_feats = scored
    broken = copy.deepcopy(tiny_teacher)
    broken.sampling = {"sampler": "fewstep", "sigmas": [broken.sigma_max, 0.0]}
    with torch.no_grad():
        next(broken.unet.parameters()).fill_(float("nan"))
    metrics, gen = evaluate_student_model(broken, tiny_teacher, digits, net, refs, teacher_m, teacher_feats, ev,
                                          progress=False)
    assert metrics["student_nonfinite_samples"] == 200 and gen.images.isnan().any()
    d = decide(GateConfig(), metrics)
    assert not d.passed and d.promote_to is None
    assert d.reasons[0] == "student samples finite: 200 of 200 samples NaN/inf vs no NaN/inf, finite FID"
