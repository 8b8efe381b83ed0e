"""The text-to-image DVC chain (dvc.yaml's *_t2i stages): each stage's command, as dvc.yaml gives it, runs in-process
on a tiny caption folder and a tiny params file, in the chain's order - captions to a stock StableDiffusionPipeline
folder; what a command reads is a dependency of its stage and what it writes an output; bad input is one line."""
import json
import shlex

import pytest
import yaml

from tests.pipelines.conftest import ROOT
from tests.pipelines.test_t2i_pipeline import TINY, caption_folder

CHAIN = ["captions_t2i", "text_t2i", "vae_t2i", "latents_t2i", "teacher_t2i", "features_t2i", "distill_t2i",
         "evaluate_t2i", "export_t2i"]
INPUTS = ("--captions", "--text", "--vae", "--latents", "--teacher", "--features", "--student")
OUTPUTS = ("--out", "--plots")


def _stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _options(cmd: str) -> dict:
    words = shlex.split(cmd)
    return {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}


def test_each_t2i_stage_reads_its_deps_and_writes_its_outs():
    stages = _stages()
    assert [n for n in stages if n.endswith("_t2i")] == CHAIN
    written = {}
    for name in CHAIN:
        st = stages[name]
        opts = _options(st["cmd"])
        assert shlex.split(st["cmd"])[:3] == ["python", "-m", "components.t2i.stages"]
        assert opts["--params"] == "params_t2i.yaml" and set(st["params"][0]) == {"params_t2i.yaml"}
        outs = [o if isinstance(o, str) else next(iter(o)) for k in ("outs", "metrics", "plots") for o in st.get(k, [])]
        for opt in INPUTS:
            if opt in opts:
                assert opts[opt] in st["deps"], (name, opt)
                assert opts[opt] in written, f"{name} reads {opts[opt]} before a stage writes it"
        if "--metrics" in opts and name != "evaluate_t2i":              # export reads evaluate's metrics
            assert opts["--metrics"] in st["deps"] and opts["--metrics"] in written
        for opt in OUTPUTS + (("--metrics",) if name == "evaluate_t2i" else ()):
            if opt in opts:
                assert opts[opt] in outs, (name, opt)
                written[opts[opt]] = name


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The chain's commands run in order in a scratch folder with a tiny params_t2i.yaml."""
    from components.t2i import stages as t2i_stages

    tmp = tmp_path_factory.mktemp("t2i_dvc")
    params = {k: dict(v) for k, v in TINY.items()}
    params["data"] = {"source": "folder", "path": str(caption_folder(tmp / "captions")), "resolution": 16,
                      "eval_fraction": 0.25}
    (tmp / "params_t2i.yaml").write_text(yaml.safe_dump(params))
    stages = _stages()
    return tmp, t2i_stages, {n: shlex.split(stages[n]["cmd"])[3:] for n in CHAIN}


def test_the_t2i_chain_runs_the_commands_dvc_yaml_gives(chain, monkeypatch, capsys):
    from diffusers import DiffusionPipeline, LCMScheduler

    tmp, t2i_stages, commands = chain
    monkeypatch.chdir(tmp)
    for name in CHAIN:
        assert t2i_stages.main(commands[name]) == 0, (name, capsys.readouterr().err[-2000:])
    metrics = json.loads((tmp / "metrics_t2i.json").read_text())
    assert metrics["teacher"]["nfe"] == 2 * TINY["teacher"]["sampler_steps"] and metrics["student"]["nfe"] == 1
    assert {"fid", "vae_floor", "real"} <= set(metrics["teacher"]) | set(metrics)
    assert (tmp / "artifacts/t2i/eval/samples.png").is_file()
    losses = (tmp / "plots/t2i_distill_losses.csv").read_text().splitlines()
    assert losses[0].startswith("iteration") and len(losses) == 1 + TINY["distill"]["iterations"]
    pipe = DiffusionPipeline.from_pretrained(tmp / "models/t2i_student", local_files_only=True)
    assert isinstance(pipe.scheduler, LCMScheduler)
    image = pipe("a square on the left", num_inference_steps=1, guidance_scale=0, height=16, width=16,
                 output_type="np").images[0]
    assert image.shape == (16, 16, 3)


def test_a_rejected_student_is_not_exported(chain, monkeypatch, tmp_path):
    tmp, t2i_stages, commands = chain
    monkeypatch.chdir(tmp)
    strict = yaml.safe_load((tmp / "params_t2i.yaml").read_text())
    metrics = json.loads((tmp / "metrics_t2i.json").read_text())
    assert metrics["student"]["fid"] > 1.5 * metrics["real"]["fid"]
    strict["gate"] = {**strict["gate"], "fid_max": 1.5 * metrics["real"]["fid"]}    # just above the floor
    (tmp / "strict.yaml").write_text(yaml.safe_dump(strict))
    cmd = [w if w != "params_t2i.yaml" else "strict.yaml" for w in commands["export_t2i"]]
    cmd[cmd.index("--out") + 1] = str(tmp_path / "rejected")
    assert t2i_stages.main(cmd) == 0
    assert [p.name for p in (tmp_path / "rejected").iterdir()] == ["REJECTED.md"]
    assert "fid" in (tmp_path / "rejected" / "REJECTED.md").read_text().lower()


def test_t2i_stage_bad_input_is_one_line_and_writes_nothing(chain, monkeypatch, capsys, tmp_path):
    tmp, t2i_stages, commands = chain
    monkeypatch.chdir(tmp)
    assert t2i_stages.main(["latents", "--captions", "artifacts/t2i/captions", "--out", str(tmp_path / "x")]) == 2
    assert "needs --text, --vae" in capsys.readouterr().err
    (tmp / "bad.yaml").write_text("distill:\n  lora: {rank: 0}\n")
    assert t2i_stages.main(["captions", "--params", "bad.yaml", "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "distill.lora.rank" in err
    assert t2i_stages.main(["captions", "--params", "nope.yaml", "--out", str(tmp_path / "c")]) == 1
    assert "nope.yaml" in capsys.readouterr().err
    assert t2i_stages.main(["distill", "--params", "params_t2i.yaml", "--teacher", "artifacts/t2i/teacher",
                            "--latents", str(tmp_path / "missing"), "--out", str(tmp_path / "s")]) == 1
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def test_a_user_folder_passes_through_the_text_vae_and_teacher_stages(chain, monkeypatch):
    """teacher.path: text_t2i and vae_t2i copy the folder's parts and teacher_t2i its UNet - nothing is trained."""
    from components.diffusion.denoiser import state_hash
    from components.t2i.parts import SDParts

    tmp, t2i_stages, commands = chain
    monkeypatch.chdir(tmp)
    user = tmp / "artifacts/t2i/teacher"                 # the chain's teacher: a complete SD folder
    params = yaml.safe_load((tmp / "params_t2i.yaml").read_text())
    params["teacher"] = {**params["teacher"], "path": str(user), "train_steps": 10_000}   # would be slow if trained
    (tmp / "user.yaml").write_text(yaml.safe_dump(params))

    def run(name, **outs):
        cmd = [w if w != "params_t2i.yaml" else "user.yaml" for w in commands[name]]
        for opt, path in outs.items():
            cmd[cmd.index(f"--{opt}") + 1] = path
        assert t2i_stages.main(cmd) == 0, name

    run("text_t2i", out="user/text")
    run("vae_t2i", out="user/vae")
    run("teacher_t2i", text="user/text", vae="user/vae", out="user/teacher")
    theirs, ours = SDParts.load(user), SDParts.load(tmp / "user/teacher")
    assert not (tmp / "user/text/vae").exists() and not (tmp / "user/vae/unet").exists()
    for part in ("unet", "vae", "text_encoder"):
        assert state_hash(getattr(ours, part)) == state_hash(getattr(theirs, part)), part
