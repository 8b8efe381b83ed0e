"""Steps called through `.entrypoint()`: no stack, no orchestrator."""
import pytest
from PIL import Image

import pandas as pd

from components.config import ConfigError, DataConfig, EvalConfig, ExtractorConfig, FeatureNetConfig, PairsConfig, TeacherConfig
from components.data import ImageDataset
from components.data.validation import DataValidationError, DataValidationReport
from components.diffusion import Denoiser
from components.methods import DMD2Config
from components.diffusion.generate import balanced_labels, generate
from components.metrics.evaluate import agreement, extractor_for, score_samples
from components.metrics import FeatureNet
from steps.dataset import build_dataset
from steps.distill import distill_step
from steps.evaluate_student import evaluate_student
from steps.evaluate_teacher import evaluate_teacher
from steps.feature_net import feature_net_step
from steps.ingest import ingest_data
from steps.pairs import teacher_pairs
from steps.references import reference_statistics
from steps.report import report_step
from steps.teacher import teacher_step
from steps.validate import validate_data
from tests.conftest import TINY_TEACHER

EVAL = EvalConfig(num_samples=60, batch_size=30, grid_per_class=2, teacher_nfe_steps=(2,), latency_repeats=2,
                  agreement_samples=20, kid_subsets=5)
EXTRACTOR = ExtractorConfig(feature_net="dataset")


@pytest.fixture(scope="module")
def chain(digits_npz, tmp_path_factory):
    data = DataConfig(path=digits_npz)
    manifest = ingest_data.entrypoint(data, "md5-of-the-data")
    report = validate_data.entrypoint(manifest, data)
    assert isinstance(manifest, pd.DataFrame) and isinstance(report, DataValidationReport) and report.success
    dataset = build_dataset.entrypoint(manifest, report, data)
    fnet = feature_net_step.entrypoint(dataset, FeatureNetConfig(dim=16, train_steps=40))
    teacher, curve = teacher_step.entrypoint(dataset, TeacherConfig(**TINY_TEACHER))
    refs = reference_statistics.entrypoint(dataset, fnet, EXTRACTOR)
    work = tmp_path_factory.mktemp("pairs")
    pairs = teacher_pairs.entrypoint(teacher, PairsConfig(num_pairs=24, shard_size=10, work_dir=str(work)),
                                     {"sampler_steps": TINY_TEACHER["sampler_steps"]})
    assert len(pairs) == 24 and len(list(next(work.iterdir()).glob("shard-*.safetensors"))) == 3
    student, history, dcurve = distill_step.entrypoint(
        teacher, dataset, pairs, fnet, refs, DMD2Config(iterations=4, batch_size=8, log_every=2, fid_every=4,
                                                        regression_weight=0.5, checkpoint_every=0),
        EXTRACTOR, fid_samples=20)
    assert "loss_reg" in history[0]
    return dataset, fnet, teacher, curve, student, history, dcurve, refs


def test_ingest_and_models(chain):
    dataset, fnet, teacher, curve, student, history, dcurve, refs = chain
    assert isinstance(dataset, ImageDataset) and isinstance(fnet, FeatureNet)
    assert refs.eval.features.shape == (int(dataset.is_eval.sum()), 16)
    assert "fid" not in history[0]                                # checkpoint FID at iteration 4 only ...
    gen = generate(student, balanced_labels(20, dataset.num_classes), 0)   # ... of the student the step returns
    expected = score_samples(gen, "check", extractor_for(EXTRACTOR, fnet), fnet, refs, kid_subsets=1)[0]["fid"]
    assert history[1]["fid"] == pytest.approx(expected, rel=1e-6)
    assert isinstance(teacher, Denoiser) and isinstance(student, Denoiser)
    assert isinstance(curve, Image.Image) and isinstance(dcurve, Image.Image)
    assert [h["iteration"] for h in history] == [2, 4]
    assert student.sampling["sampler"] == "fewstep" and teacher.sampling["sampler"] == "heun"


def test_evaluate_and_report_steps(chain):
    dataset, fnet, teacher, _, student, history, _, refs = chain
    t_metrics, t_feats, t_grid = evaluate_teacher.entrypoint(teacher, dataset, fnet, refs, EVAL)
    assert t_metrics["nfe"] == 2 * TINY_TEACHER["sampler_steps"] - 1
    assert t_feats.features.shape == (60, 16)
    assert sorted(p["nfe"] for p in t_metrics["fid_vs_nfe"]) == [3, t_metrics["nfe"]]
    metrics, grid = evaluate_student.entrypoint(student, teacher, dataset, fnet, refs, t_metrics, t_feats, EVAL)
    for key in ("teacher_fid", "student_fid", "distill_gap_fid", "real_floor_fid", "sampling_speedup",
                "teacher_class_acc", "student_class_acc", "feature_net", "num_samples", "reference",
                "teacher_kid", "student_kid", "teacher_latency_p50_ms", "student_latency_p50_ms",
                "teacher_throughput", "student_throughput", "agreement_rmse", "agreement_class"):
        assert key in metrics
    assert metrics["student_nfe"] == 1 and metrics["num_samples"] == 60
    assert metrics["feature_net"] == fnet.name
    assert metrics["teacher_nfe"] == 5 and metrics["sampling_speedup"] > 0      # 5 NFE vs 1 (no wall-clock race)
    # agreement = teacher vs student from the same noise: the teacher against itself agrees exactly
    same = agreement(teacher, teacher, fnet, dataset.num_classes, 20, EVAL.seed, EVAL.batch_size)
    assert same["agreement_rmse"] == 0.0 and same["agreement_class"] == 1.0
    assert metrics["agreement_rmse"] > 0.01 and metrics["agreement_samples"] == 20
    assert isinstance(grid, Image.Image)
    decision = {"passed": False, "promote_to": None, "reasons": ["FID ratio to teacher: 3 vs 2"],
                "checks": [{"rule": "FID ratio to teacher", "value": 3.0, "threshold": 2.0, "passed": False}]}
    lineage = {"data_path": "data/x.npz", "data_md5": "abc123", "git_commit": "deadbeef", "built_at": "now"}
    page, plot = report_step.entrypoint(metrics, t_metrics, decision, t_grid, grid, lineage, history)
    for text in ("REJECTED", "FID ratio to teacher", "FID vs NFE", "FID during distillation", "abc123",
                 "data:image/png;base64,", f"{metrics['student_fid']:.3f}"):
        assert text in str(page)
    without = report_step.entrypoint(metrics, t_metrics, decision, t_grid, grid, lineage, [history[0]])[0]
    assert "FID during distillation" not in str(without)         # no checkpoint FID, no picture
    assert isinstance(plot, Image.Image) and plot.size[0] > 200


def test_failed_validation_stops_before_the_dataset(digits_npz):
    data = DataConfig(path=digits_npz, min_per_class=500)
    manifest = ingest_data.entrypoint(data, "")
    report = validate_data.entrypoint(manifest, data)           # stored either way; never raises
    assert not report.success and "at least 500 images per class" in report.to_html()
    with pytest.raises(DataValidationError, match=r"at least 500 images per class: .*class '0'"):
        build_dataset.entrypoint(manifest, report, data)


def test_step_names_a_missing_data_file(tmp_path):
    """Steps take typed sections (validated once, by load_params); what a section cannot know - the
    file is gone by the time the step runs - is still one line naming the field and the file."""
    with pytest.raises(ConfigError, match=r"data\.path '.*absent': no such file"):
        ingest_data.entrypoint(DataConfig(path=str(tmp_path / "absent")), "")
