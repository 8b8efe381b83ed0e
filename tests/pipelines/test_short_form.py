"""`zenml pipeline run dmd2_pipeline` as the README writes it: a dot-less source that ZenML's CLI loads
with importlib and requires to be a pipeline (the tiny runs of tests/pipelines/conftest.py run through it)."""
import re
from pathlib import Path

import pytest
import yaml
from zenml.pipelines.pipeline_definition import Pipeline
from zenml.utils import source_utils

ROOT = Path(__file__).resolve().parents[2]
SHORT = {"dmd2_pipeline": "dmd2_local.yaml", "guided_pipeline": "guided_local.yaml", "msd_pipeline": "msd_local.yaml"}


@pytest.mark.parametrize("name", sorted(SHORT))
def test_short_form_is_the_pipeline_with_its_local_config_unless_c_names_another(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))                       # ZenML's source root: the repository
    pipeline = source_utils.load(name)                           # what `zenml pipeline run <name>` imports
    assert isinstance(pipeline, Pipeline) and pipeline.name == name
    default = yaml.safe_load((ROOT / "configs" / SHORT[name]).read_text())
    assert pipeline.with_options()._from_config_file == default              # no -c: the local run config
    tiny = ROOT / "tests" / "pipelines" / "tiny.yaml"
    assert pipeline.with_options(config_path=str(tiny))._from_config_file == yaml.safe_load(tiny.read_text())
    # the recorded source (what a Kubeflow pod imports) is the pipeline's own module, as with the long form
    long_form = source_utils.load(f"pipelines.{name}.{name}")
    assert pipeline.resolve() == long_form.resolve() and pipeline.resolve().module == f"pipelines.{name}"


def test_every_zenml_command_of_the_readme_resolves_and_names_an_existing_config(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    commands = re.findall(r"zenml pipeline run (\S+?)(?: -c (\S+?))?[`\s]", (ROOT / "README.md").read_text())
    assert {source for source, _ in commands} >= {"dmd2_pipeline"}
    for source, config in commands:
        assert isinstance(source_utils.load(source), Pipeline), source
        assert not config or (ROOT / config).is_file(), config


def test_a_missing_default_config_is_one_line_naming_it(tmp_path):
    from pipelines.dmd2_pipeline import dmd2_pipeline
    from pipelines.short_form import register

    with pytest.raises(FileNotFoundError, match=r"nope\.yaml: the default run config of `dmd2_pipeline` is missing"):
        register("never_registered", dmd2_pipeline, tmp_path / "nope.yaml")
