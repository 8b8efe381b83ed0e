"""Steps called through `.entrypoint()`: no stack, no orchestrator."""
import pytest
from PIL import Image

import pandas as pd

from components.config import ConfigError
from components.data import ImageDataset
from components.data.validation import DataValidationError, DataValidationReport
from components.diffusion import Denoiser
from components.metrics import FeatureNet
from steps.dataset import build_dataset
from steps.distill import distill_step
from steps.evaluate_student import evaluate_student
from steps.evaluate_teacher import evaluate_teacher
from steps.feature_net import feature_net_step
from steps.ingest import ingest_data
from steps.teacher import teacher_step
from steps.validate import validate_data
from tests.conftest import TINY_TEACHER

EVAL = {"num_samples": 60, "batch_size": 30, "grid_per_class": 2}


@pytest.fixture(scope="module")
def chain(digits_npz):
    data = {"path": digits_npz}
    manifest = ingest_data.entrypoint(data, "md5-of-the-data")
    report = validate_data.entrypoint(manifest, data)
    assert isinstance(manifest, pd.DataFrame) and isinstance(report, DataValidationReport) and report.success
    dataset = build_dataset.entrypoint(manifest, report, data)
    fnet = feature_net_step.entrypoint(dataset, {"dim": 16, "train_steps": 40})
    teacher, curve = teacher_step.entrypoint(dataset, dict(TINY_TEACHER, block_out_channels=[16, 32]))
    student, history, dcurve = distill_step.entrypoint(
        teacher, dataset, {"method": "dmd2", "iterations": 4, "batch_size": 8, "log_every": 2})
    return dataset, fnet, teacher, curve, student, history, dcurve


def test_ingest_and_models(chain):
    dataset, fnet, teacher, curve, student, history, dcurve = chain
    assert isinstance(dataset, ImageDataset) and isinstance(fnet, FeatureNet)
    assert isinstance(teacher, Denoiser) and isinstance(student, Denoiser)
    assert isinstance(curve, Image.Image) and isinstance(dcurve, Image.Image)
    assert [h["iteration"] for h in history] == [2, 4]
    assert student.sampling["sampler"] == "fewstep" and teacher.sampling["sampler"] == "heun"


def test_evaluate_steps(chain):
    dataset, fnet, teacher, _, student, _, _ = chain
    t_metrics, t_stats, t_grid = evaluate_teacher.entrypoint(teacher, dataset, fnet, EVAL)
    assert t_metrics["nfe"] == 2 * TINY_TEACHER["sampler_steps"] - 1
    assert len(t_stats["mu"]) == 16
    metrics, grid = evaluate_student.entrypoint(student, dataset, fnet, t_metrics, t_stats, EVAL)
    for key in ("teacher_fid", "student_fid", "distill_gap_fid", "real_floor_fid", "sampling_speedup",
                "teacher_class_acc", "student_class_acc", "feature_net", "num_samples", "reference"):
        assert key in metrics
    assert metrics["student_nfe"] == 1 and metrics["num_samples"] == 60
    assert metrics["feature_net"] == fnet.name
    assert isinstance(grid, Image.Image)


def test_failed_validation_stops_before_the_dataset(digits_npz):
    data = {"path": digits_npz, "min_per_class": 500}
    manifest = ingest_data.entrypoint(data, "")
    report = validate_data.entrypoint(manifest, data)           # stored either way; never raises
    assert not report.success and "at least 500 images per class" in report.to_html()
    with pytest.raises(DataValidationError, match=r"at least 500 images per class: .*class '0'"):
        build_dataset.entrypoint(manifest, report, data)


def test_step_rejects_bad_config(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.format"):
        ingest_data.entrypoint({"format": "imagenet"}, "")
    with pytest.raises(ConfigError, match=r"data\.path '.*absent': no such file"):
        ingest_data.entrypoint({"path": str(tmp_path / "absent")}, "")
    with pytest.raises(ConfigError, match=r"features\.dim"):
        feature_net_step.entrypoint(None, {"dim": "wide"})
