from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, DataConfig, TeacherConfig, load_params, parse_section, resolve_config


def test_defaults_are_filled_and_resolved(digits_npz):
    cfg = resolve_config(data={"path": digits_npz})
    assert cfg["data"]["format"] == "auto" and cfg["data"]["min_per_class"] == 10
    assert cfg["distill"]["method"] == "dmd2"
    assert cfg["distill"]["dfake_gen_update_ratio"] == 5
    assert cfg["teacher"]["sampler_steps"] == 18


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError) as e:
        parse_section(TeacherConfig, {"train_steps": "many"}, "teacher")
    msg = str(e.value)
    assert "teacher.train_steps" in msg and "integer" in msg and "\n" not in msg


def test_wrong_type_in_distill_section(digits_npz):
    with pytest.raises(ConfigError, match=r"distill\.lr_gen.*number"):
        resolve_config(data={"path": digits_npz}, distill={"lr_gen": "fast"})


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"data\.resolutoin.*unknown key"):
        parse_section(DataConfig, {"resolutoin": 8}, "data")


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="'evaluation': expected a mapping"):
        resolve_config(evaluation=[1, 2])


def test_unknown_method_lists_valid_names(digits_npz):
    with pytest.raises(ConfigError, match=r"distill\.method.*'nope'.*valid: dmd2"):
        resolve_config(data={"path": digits_npz}, distill={"method": "nope"})


def test_unknown_format_lists_valid_names():
    with pytest.raises(ConfigError, match=r"data\.format.*'cifar'"):
        resolve_config(data={"format": "cifar"})


def test_missing_teacher_folder(tmp_path, digits_npz):
    with pytest.raises(ConfigError, match=r"teacher\.path .*no such folder"):
        resolve_config(data={"path": digits_npz}, teacher={"path": str(tmp_path / "absent")})


def test_missing_data_path_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path '.*nope\.npz': no such file or folder"):
        resolve_config(data={"path": str(tmp_path / "nope.npz")})


def test_params_file_with_overrides(tmp_path, digits_npz):
    p = tmp_path / "params.yaml"
    p.write_text(f"data: {{path: '{digits_npz}'}}\nteacher: {{train_steps: 7, lr: 0.01}}\n")
    cfg = load_params(str(p), teacher={"train_steps": 9})
    assert cfg["teacher"]["train_steps"] == 9 and cfg["teacher"]["lr"] == 0.01   # merged, not replaced
    assert cfg["data"]["path"] == digits_npz


def test_bad_params_files(tmp_path, digits_npz):
    with pytest.raises(ConfigError, match=r"params file '.*absent\.yaml': no such file"):
        load_params(str(tmp_path / "absent.yaml"))
    p = tmp_path / "p.yaml"
    p.write_text("teacher: [1, 2\n")
    with pytest.raises(ConfigError, match=r"params file '.*p\.yaml': not valid YAML at line"):
        load_params(str(p))
    p.write_text(f"data: {{path: '{digits_npz}'}}\nteachr: {{}}\n")
    with pytest.raises(ConfigError, match=r"unknown section 'teachr'"):
        load_params(str(p))


def test_repo_params_yaml_is_valid_and_points_under_data():
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    cfg = parse_section(DataConfig, yaml.safe_load(params.read_text())["data"], "data")
    assert cfg.path.startswith("data/")


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"data\.eval_fraction"):
        parse_section(DataConfig, {"eval_fraction": 1.5}, "data")
