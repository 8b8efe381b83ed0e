import pytest

from components.config import ConfigError, DataConfig, TeacherConfig, parse_section, resolve_config


def test_defaults_are_filled_and_resolved():
    cfg = resolve_config()
    assert cfg["data"]["source"] == "digits"
    assert cfg["distill"]["method"] == "dmd2"
    assert cfg["distill"]["dfake_gen_update_ratio"] == 5
    assert cfg["teacher"]["sampler_steps"] == 18


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError) as e:
        parse_section(TeacherConfig, {"train_steps": "many"}, "teacher")
    msg = str(e.value)
    assert "teacher.train_steps" in msg and "integer" in msg and "\n" not in msg


def test_wrong_type_in_distill_section():
    with pytest.raises(ConfigError, match=r"distill\.lr_gen.*number"):
        resolve_config(distill={"lr_gen": "fast"})


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"data\.resolutoin.*unknown key"):
        parse_section(DataConfig, {"resolutoin": 8}, "data")


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="'evaluation': expected a mapping"):
        resolve_config(evaluation=[1, 2])


def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError, match=r"distill\.method.*'nope'.*valid: dmd2"):
        resolve_config(distill={"method": "nope"})


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match=r"data\.source.*'cifar'.*valid: digits, folder"):
        resolve_config(data={"source": "cifar"})


def test_missing_teacher_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher\.path .*no such folder"):
        resolve_config(teacher={"path": str(tmp_path / "absent")})


def test_folder_source_needs_a_path():
    with pytest.raises(ConfigError, match=r"data\.path.*required"):
        resolve_config(data={"source": "folder"})


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"data\.eval_fraction"):
        parse_section(DataConfig, {"eval_fraction": 1.5}, "data")
