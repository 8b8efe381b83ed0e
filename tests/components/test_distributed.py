"""Scale-out: `torchrun --nproc_per_node 2 -m components.stages distill` (2 CPU processes, gloo) gives
the losses and weights of one process with the same global batch.

Tolerance, stated: the ranks draw the same random numbers as the single process for their
shards, so the only difference is float32 summation order (convolutions over 4 instead of 8
samples, one all-reduce of the gradients). Measured on the 2-core CI box: per-step losses agree
to ~1e-6 relative, weights after 6 steps to ~1e-6; asserted: losses rtol 1e-4, weights atol 1e-4
(AdamW with beta1 = 0 normalises each step, so the last bits of a gradient do not grow).

Cost: the one real launch is the 2-process run (both methods in one launch: tests/components/ddp_stages.py). Its inputs are written in-process in the stages'
own formats, the 1-process reference is the same stage CLI (components.stages.main) in-process,
and the refusal of a global batch that does not divide runs that CLI in-process as each rank of a
world of 2 (the refusal comes before any collective)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import components.distributed
import components.methods.interface
from components import stages
from components.diffusion import save_denoiser
from components.distributed import World

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def test_world_shards_a_global_batch_like_one_process():
    t = torch.arange(8)
    shards = [World(r, 2).shard(t) for r in range(2)]
    assert torch.equal(torch.cat(shards), t)
    both = torch.cat([torch.arange(8), 100 + torch.arange(8)])          # fake then real, end to end
    assert World(1, 2).shard(both, parts=2).tolist() == [4, 5, 6, 7, 104, 105, 106, 107]
    assert World().shard(t) is t
    with pytest.raises(ValueError, match="multiple of the world size"):
        World(0, 3).shard(t)


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, digits_npz, digits, tiny_teacher):
    """params.yaml, dataset, feature net and a tiny teacher in the folders the distill stage reads:
    the session's digits (ImageDataset.save, as the data stage writes it), its tiny teacher
    (save_denoiser, as the teacher stage: the same config as the teacher section below) and a
    feature net from the features stage, run in-process."""
    tmp = tmp_path_factory.mktemp("ddp")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["path"] = digits_npz
    params["teacher"].update(train_steps=20, batch_size=32, sampler_steps=3)
    params["teacher"].update(block_out_channels=[16, 32], norm_num_groups=4)
    params["features"].update(dim=16, train_steps=20)
    params["distill"].update(iterations=6, batch_size=8, dfake_gen_update_ratio=2, log_every=1, fid_every=0,
                             checkpoint_every=0, w_gen=0.15, w_D=1.0, gan_max_step_percent=0.3)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    digits.save(tmp / "dataset")
    save_denoiser(tiny_teacher, tmp / "teacher")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert stages.main(["features", "--params", str(tmp / "params.yaml"), "--dataset", str(tmp / "dataset"),
                            "--out", str(tmp / "feature_net")]) == 0
    finally:
        torch.set_num_threads(n)
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _argv(tmp: Path, name: str, params: str = "params.yaml", method: str = "dmd2") -> list[str]:
    extra = []
    if method == "ctm":          # the CTM student through the same stage: a distill section of its own
        (tmp / "ctm.yaml").write_text(yaml.safe_dump({"distill": {"method": "ctm", "max_heun_steps": 2, "lr": 2e-3,
                                                                         "iterations": 3}}))
        extra = ["--distill-params", str(tmp / "ctm.yaml")]
    if method == "lowdiff":      # a LowDiff cascade (4x4 -> 8x8): each sample's level by its place in the global batch
        (tmp / "lowdiff.yaml").write_text(yaml.safe_dump({"distill": {"method": "lowdiff", "resolutions": [4, 8],
                                                                             "steps": [2, 2], "start_sigma": [1.0],
                                                                             "iterations": 3}}))
        extra = ["--distill-params", str(tmp / "lowdiff.yaml")]
    return ["distill", "--params", str(tmp / params), *extra, "--dataset", str(tmp / "dataset"), "--teacher",
            str(tmp / "teacher"), "--features", str(tmp / "feature_net"), "--checkpoints", str(tmp / f"ckpt-{name}"),
            "--out", str(tmp / f"student-{name}"), "--plots", str(tmp / f"losses-{name}.csv")]


def _results(tmp: Path, name: str) -> tuple[dict, list[dict]]:
    weights = load_file(str(next((tmp / f"student-{name}" / "unet").glob("*.safetensors"))))
    with open(tmp / f"losses-{name}.csv") as f:
        history = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return weights, history


METHODS = ("dmd2", "ctm", "lowdiff")


@pytest.fixture(scope="module")
def ddp_launch(stage_inputs):
    """ONE torchrun launch of 2 processes running the distill stage of each method in turn
    (tests/components/ddp_stages.py: the stage CLI, one process group for both) -> its stdout."""
    argvs = [_argv(stage_inputs, f"ddp-{m}", method=m) for m in METHODS]
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(Path(__file__).with_name(
        "ddp_stages.py")), json.dumps(argvs)], check=False, cwd=stage_inputs, env=ENV, capture_output=True, text=True,
        timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_match_one_with_the_same_global_batch(stage_inputs, ddp_launch, one_thread, method):
    single, ddp = f"single-{method}", f"ddp-{method}"
    assert stages.main(_argv(stage_inputs, single, method=method)) == 0      # one process: the stage CLI, here
    assert ddp_launch.count("on 2 process(es)") == len(METHODS)     # really data-parallel, not 2 lone runs
    (one_w, one_h), (two_w, two_h) = _results(stage_inputs, single), _results(stage_inputs, ddp)
    assert len(one_h) == len(two_h) == (6 if method == "dmd2" else 3)       # CTM, LowDiff: 3 iterations (test time)
    rel = max(abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for a, b in zip(one_h, two_h) for k in a if k.startswith("loss"))
    print(f"max relative loss difference over {len(one_h)} steps: {rel:.3e}")
    for a, b in zip(one_h, two_h):
        losses = [k for k in a if k.startswith("loss")]
        assert losses and set(losses) == {k for k in b if k.startswith("loss")}
        for k in losses:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["iteration"], k, a[k], b[k])
    assert one_w.keys() == two_w.keys()
    diff = max(float((one_w[k].float() - two_w[k].float()).abs().max()) for k in one_w)
    print(f"max |w_1proc - w_2proc| after {len(one_h)} steps: {diff:.3e}")
    assert diff < 1e-4
    if method == "lowdiff":                  # trained from scratch, not from the teacher: every step took a gradient
        assert all(h["grad_norm_model"] > 0 for h in one_h)
        return
    moved = max(float((one_w[k].float() - load_file(str(next((stage_inputs / "teacher").rglob("*.safetensors"))))[k]
                       .float()).abs().max()) for k in one_w)
    assert moved > 1e-3                      # the comparison means something: training changed the weights


def _odd_params(stage_inputs: Path) -> str:
    params = yaml.safe_load((stage_inputs / "params.yaml").read_text())
    params["distill"]["batch_size"] = 7
    (stage_inputs / "params-odd.yaml").write_text(yaml.safe_dump(params))
    return "params-odd.yaml"


@pytest.mark.parametrize("rank", [0, 1])
def test_a_global_batch_that_does_not_divide_is_refused(stage_inputs, rank, monkeypatch, capsys, one_thread):
    """The stage CLI as rank `rank` of a world of 2 (what init_from_env returns under a launcher; no
    process group): exit 1, one error line naming the field, nothing written. It fails before any
    collective (there is no process group here to reach), so under a launcher every rank refuses."""
    world = World(rank, 2)
    monkeypatch.setattr(components.distributed, "init_from_env", lambda *a, **k: world)
    monkeypatch.setattr(components.methods.interface, "current_world", lambda: world)
    name = f"odd-{rank}"
    assert stages.main(_argv(stage_inputs, name, _odd_params(stage_inputs))) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "distill.batch_size" in errors[0] and "7 does not divide over 2 processes" in errors[0]
    assert not (stage_inputs / f"student-{name}").exists() and not (stage_inputs / f"losses-{name}.csv").exists()
