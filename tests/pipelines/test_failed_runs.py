"""Runs that must fail, in the test process (the pipeline is the one `zenml pipeline run` starts; the
successful runs of tests/pipelines/test_dmd2_pipeline.py go through that CLI command itself): bad
config, empty data, bad data. They use the worker's own throwaway store (tests/conftest.py), not the
session's shared one, whose newest run the dashboard test opens."""
import logging

import pytest
from zenml.client import Client

from pipelines.dmd2_pipeline import dmd2_pipeline
from tests.conftest import write_image_folder


def _runs() -> list:
    return list(Client().list_pipeline_runs(sort_by="desc:created", size=50))


def _run(tmp_path, caplog, parameters: str):
    """dmd2_pipeline with a config file holding `parameters` (YAML) -> (the exception, the log text,
    the newest run after it, the number of runs it added)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"parameters:\n{parameters}")
    before = len(_runs())
    caplog.set_level(logging.INFO)
    with pytest.raises(Exception) as err:
        dmd2_pipeline.with_options(config_path=str(config))()
    runs = _runs()
    return err.value, f"{err.value}\n{caplog.text}", runs[0] if runs else None, len(runs) - before


def test_bad_config_fails_before_any_step(tmp_path, caplog):
    err, _, _, added = _run(tmp_path, caplog, "  teacher: {train_steps: lots}\n")
    assert "config field 'teacher.train_steps': expected an integer" in str(err) and "\n" not in str(err)
    assert added == 0                                        # refused while the pipeline is built: no run at all


def test_empty_image_folder_fails_in_ingest_with_nothing_downstream(tmp_path, caplog):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    err, logs, run, added = _run(tmp_path, caplog, f"  data: {{path: '{tmp_path / 'imgs'}'}}\n")
    assert "failure in step(s): ingest_data" in str(err)
    assert "no images found" in logs and str(tmp_path / "imgs") in logs       # the step's one-line error
    assert added == 1 and str(run.steps["ingest_data"].status).endswith("failed")
    assert "teacher_step" not in run.steps and "validate_data" not in run.steps


def test_failed_validation_stops_before_training_and_keeps_the_report(tmp_path, caplog):
    write_image_folder(tmp_path / "imgs", mode="L")
    (tmp_path / "imgs" / "dog" / "zero.png").write_bytes(b"")
    err, logs, run, added = _run(tmp_path, caplog, f"  data: {{path: '{tmp_path / 'imgs'}', min_per_class: 5}}\n")
    assert "failure in step(s): build_dataset" in str(err)
    assert "data validation failed" in logs and "every image readable" in logs and "zero.png" in logs
    assert added == 1 and str(run.steps["validate_data"].status).endswith("completed")
    assert str(run.steps["build_dataset"].status).endswith("failed")
    assert "teacher_step" not in run.steps and "feature_net_step" not in run.steps
    report = run.steps["validate_data"].outputs["data_validation"][0]       # stored although the suite failed
    assert report.load().success is False
    assert report.visualizations and "zero.png" in open(report.visualizations[0].uri).read()
