import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, DataConfig, TeacherConfig, parse_section
from components.methods import METHODS, DMD2Config
from components.params import _MODELS, RunConfig, load_params, resolve_config

ROOT = Path(__file__).resolve().parents[2]
# params.yaml keys that are a property of the embedded dataset, not a default for every dataset
DATASET_SPECIFIC = {("data", "classes")}


def test_defaults_are_filled_and_resolved(digits_npz):
    cfg = resolve_config(data={"path": digits_npz})
    assert isinstance(cfg, RunConfig) and isinstance(cfg.distill, DMD2Config)
    assert cfg.data.format == "auto" and cfg.data.min_per_class == 10
    assert cfg.distill.method == "dmd2" and cfg.distill.dfake_gen_update_ratio == 5
    assert cfg.teacher.sampler_steps == 18
    assert cfg.as_dict()["distill"]["denoising_timesteps"] == [999]          # JSON-able for lineage / W&B


def test_params_yaml_and_the_typed_defaults_agree():
    """One set of defaults: DMD2Config() in Python is the method `make run` runs. Fails on drift."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    drift = []
    for section, values in params.items():
        model = _MODELS.get(section) or METHODS[values["method"]].Config
        assert set(values) <= set(model.model_fields), (section, set(values) - set(model.model_fields))
        for key, value in values.items():
            default = model.model_fields[key].default
            default = list(default) if isinstance(default, tuple) else default
            if default != value and (section, key) not in DATASET_SPECIFIC:
                drift.append(f"{section}.{key}: params.yaml {value!r} vs default {default!r}")
    assert not drift, drift
    assert parse_section(DMD2Config, params["distill"], "distill") == DMD2Config()


def test_config_module_is_a_leaf():
    """components.config imports no other project module (no import loop through it)."""
    code = ("import sys, components.config as c; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'components', 'steps', 'pipelines', 'infra'}"
            " and m not in {'components', 'components.config'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    valid = "cascade_dmd2, ctm, dmd2, guided, lowdiff, msd, progressive"
    with pytest.raises(ConfigError, match=rf"distill\.method.*'nope'.*valid: {valid}"):
        resolve_config(data={"path": digits_npz}, distill={"method": "nope"})


def test_progressive_alone_is_refused_before_any_step(digits_npz):
    with pytest.raises(ConfigError, match=r"distill\.method.*'progressive' runs only as the halvings of a guided "
                                          r"chain: distill\.method guided with distill\.target_steps"):
        resolve_config(data={"path": digits_npz}, distill={"method": "progressive"})


@pytest.mark.parametrize("chain, match", [
    ({"sampling_steps": 8, "target_steps": 3}, r"'distill\.target_steps': 8 steps cannot be halved to 3"),
    ({"sampling_steps": 8, "target_steps": 8}, r"'distill\.target_steps': 8 leaves nothing to halve"),
    ({"target_steps": 4, "halving": {"iterations": 0}}, r"'distill\.halving\.iterations'"),
    ({"target_steps": 4, "halving": {"lerning_rate": 1}}, r"'distill\.halving\.lerning_rate': not a key"),
    ({"target_steps": 4, "halving": {"target_steps": 2}}, r"'distill\.halving\.target_steps': set by the chain"),
])
def test_a_guided_chain_is_checked_before_any_step(digits_npz, chain, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(data={"path": digits_npz}, distill={"method": "guided", **chain})


def test_each_pipeline_names_the_one_that_runs_a_method():
    from components.methods import check_pipeline

    check_pipeline("ctm", "dmd2_pipeline")
    check_pipeline("guided", "guided_pipeline")
    with pytest.raises(ConfigError, match=r"'distill\.method': dmd2_pipeline does not run 'guided' .*"
                                          r"use pipelines\.guided_pipeline"):
        check_pipeline("guided", "dmd2_pipeline")
    with pytest.raises(ConfigError, match=r"guided_pipeline does not run 'dmd2' .*use pipelines\.dmd2_pipeline"):
        check_pipeline("dmd2", "guided_pipeline")


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
    assert cfg.teacher.train_steps == 9 and cfg.teacher.lr == 0.01   # merged, not replaced
    assert cfg.data.path == digits_npz


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
    params = ROOT / "params.yaml"
    cfg = parse_section(DataConfig, yaml.safe_load(params.read_text())["data"], "data")
    assert cfg.path.startswith("data/")


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"data\.eval_fraction"):
        parse_section(DataConfig, {"eval_fraction": 1.5}, "data")


def test_no_import_cycle_in_the_library():
    """scripts/import_graph.py (top-level and lazy imports alike) finds no cycle in components/."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from import_graph import cycles
    finally:
        sys.path.pop(0)
    assert cycles(["components"]) == []


def test_the_library_imports_no_orchestration_package():
    """components/ is callable without a stack: no module of it imports zenml, dvc, kfp or kubernetes."""
    import ast

    banned = {"zenml", "dvc", "kfp", "kubernetes"}
    found = []
    for path in (ROOT / "components").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in banned]
    assert not found, found


def test_a_distill_section_of_another_method_keeps_only_the_shared_keys(digits_npz, tmp_path):
    """params.yaml is DMD2's; distill: {method: ctm} over it takes CTM's defaults plus params.yaml's
    method-independent keys - the ZenML config configs/ctm_local.yaml and DVC's params_ctm.yaml alike."""
    from components.methods import CTMConfig
    from components.params import read_distill_file

    base = yaml.safe_load((ROOT / "params.yaml").read_text())["distill"]
    for override in (yaml.safe_load((ROOT / "configs" / "ctm_local.yaml").read_text())["parameters"]["distill"],
                     read_distill_file(str(ROOT / "params_ctm.yaml"))):
        cfg = load_params(str(ROOT / "params.yaml"), data={"path": digits_npz}, distill=override).distill
        assert isinstance(cfg, CTMConfig) and cfg.iterations == base["iterations"] and cfg.seed == base["seed"]
        assert cfg.checkpoint_every == base["checkpoint_every"] and cfg.num_scales == override["num_scales"]
    # the same method: keys merge as before
    cfg = load_params(str(ROOT / "params.yaml"), data={"path": digits_npz}, distill={"w_gen": 0.5}).distill
    assert isinstance(cfg, DMD2Config) and cfg.w_gen == 0.5 and cfg.lr_gen == base["lr_gen"]
    # a DMD2 key in a CTM section is named
    with pytest.raises(ConfigError, match="distill.w_gen"):
        load_params(str(ROOT / "params.yaml"), data={"path": digits_npz}, distill={"method": "ctm", "w_gen": 0.1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: {method: ctm}\nteacher: {}\n")
    with pytest.raises(ConfigError, match="bad.yaml': expected a YAML mapping with one section, distill"):
        read_distill_file(str(bad))


LOCAL_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml")
                       if "kubeflow" not in p.name and not p.name.startswith("t2i"))   # t2i: params_t2i.yaml, below


@pytest.mark.parametrize("name", LOCAL_CONFIGS)
def test_every_local_run_config_resolves(name, digits_npz):
    """configs/*.yaml (the Kubeflow ones: tests/infra/test_kubeflow.py) over params.yaml validate as the pipeline
    reads them: no unknown key, no bad chain. data.path points at the digits here (the Fashion-MNIST npz is a
    `make fashion-mnist` away); every other value is the file's."""
    raw = yaml.safe_load((ROOT / "configs" / name).read_text())["parameters"]
    params_file = raw.pop("params_file")
    raw["data"] = {**raw.get("data", {}), "path": digits_npz, "classes": None}
    cfg = load_params(str(ROOT / params_file), **raw)
    assert cfg.distill.method == (raw.get("distill") or {}).get("method", "dmd2")


def test_the_fashion_configs_share_one_teacher():
    """Every Fashion-MNIST run config trains the same teacher (one cache key: the leaderboard's, the
    pipeline's) and keeps params.yaml's gate, whose class-accuracy floor is relative to the real images' (an
    absolute floor set for the digits rejected every Fashion model); the guided chain there starts on that
    teacher's own step count."""
    read = lambda n: yaml.safe_load((ROOT / "configs" / n).read_text())["parameters"]     # noqa: E731
    fashion = [n for n in LOCAL_CONFIGS if n.endswith("fashion16.yaml")]
    assert "guided_fashion16.yaml" in fashion and "dmd2_fashion16.yaml" in fashion
    assert all(read(n)["teacher"] == read("dmd2_fashion16.yaml")["teacher"] for n in fashion)
    assert not any("gate" in read(n) for n in fashion) and "ctm_fashion16.yaml" in fashion
    gate = yaml.safe_load((ROOT / "params.yaml").read_text())["gate"]                               # no data/ needed
    assert gate["class_acc_min"] is None and 0 < gate["class_acc_min_real"] < 1
    guided = read("guided_fashion16.yaml")
    assert guided["distill"]["sampling_steps"] == guided["teacher"]["sampler_steps"]


def test_the_t2i_run_config_and_params_file_resolve_with_the_typed_defaults():
    """configs/t2i_local.yaml over params_t2i.yaml validates as t2i_pipeline reads it, and the file's values equal
    the typed defaults they restate (components/t2i/config.py, components/t2i/run.py: T2I_DISTILL), so neither drifts."""
    from components.t2i.run import load_t2i_params, resolve_t2i

    raw = yaml.safe_load((ROOT / "configs" / "t2i_local.yaml").read_text())["parameters"]
    cfg = load_t2i_params(str(ROOT / raw.pop("params_file")), **raw)
    assert cfg.export.path == "models/t2i_student" and cfg.distill.method == "dmd2"
    assert cfg.model_dump(exclude={"export"}) == resolve_t2i({}).model_dump(exclude={"export"})
    raw = yaml.safe_load((ROOT / "configs" / "t2i_4step_local.yaml").read_text())["parameters"]
    four = load_t2i_params(str(ROOT / raw.pop("params_file")), **raw)
    assert list(four.distill.denoising_timesteps) == [999, 749, 499, 249] and four.teacher == cfg.teacher
