"""Scale-out: `torchrun --nproc_per_node 2 -m components.stages distill` (2 CPU processes, gloo) gives
the losses and weights of one process with the same global batch.

Tolerance, stated: the ranks draw the same random numbers as the single process for their
shards, so the only difference is float32 summation order (convolutions over 4 instead of 8
samples, one all-reduce of the gradients). Measured on the 2-core CI box: per-step losses agree
to ~1e-6 relative, weights after 6 steps to ~1e-6; asserted: losses rtol 1e-4, weights atol 1e-4
(AdamW with beta1 = 0 normalises each step, so the last bits of a gradient do not grow)."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.distributed import World

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


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
def stage_inputs(tmp_path_factory, digits_npz):
    """dataset, feature net and a tiny teacher written by the stages themselves."""
    tmp = tmp_path_factory.mktemp("ddp")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["path"] = digits_npz
    params["teacher"].update(train_steps=20, batch_size=32, sampler_steps=3)
    params["teacher"].update(block_out_channels=[16, 32], norm_num_groups=4)
    params["features"].update(dim=16, train_steps=20)
    params["distill"].update(iterations=6, batch_size=8, dfake_gen_update_ratio=2, log_every=1, fid_every=0,
                             checkpoint_every=0, w_gen=0.15, w_D=1.0, gan_max_step_percent=0.3)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for stage, args in (("data", []), ("features", ["--dataset", "dataset"]),
                        ("teacher", ["--dataset", "dataset", "--plots", "teacher.csv"])):
        out = {"data": "dataset", "features": "feature_net", "teacher": "teacher"}[stage]
        subprocess.run([sys.executable, "-m", "components.stages", stage, "--params", "params.yaml", *args,
                        "--out", out], cwd=tmp, env={**env, "PYTHONPATH": str(ROOT)}, check=True,
                       capture_output=True, timeout=600)
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _distill(tmp: Path, launcher: list[str], name: str) -> tuple[dict, list[dict]]:
    cmd = [*launcher, "-m", "components.stages", "distill", "--params", "params.yaml", "--dataset", "dataset",
           "--teacher", "teacher", "--features", "feature_net", "--checkpoints", f"ckpt-{name}",
           "--out", f"student-{name}", "--plots", f"losses-{name}.csv"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    weights = load_file(str(next((tmp / f"student-{name}").rglob("*.safetensors"))))
    with open(tmp / f"losses-{name}.csv") as f:
        history = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return weights, history


def test_two_processes_match_one_with_the_same_global_batch(stage_inputs):
    one_w, one_h = _distill(stage_inputs, [sys.executable], "single")
    two_w, two_h = _distill(stage_inputs, [TORCHRUN, "--standalone", "--nproc_per_node", "2"], "ddp")
    assert len(one_h) == len(two_h) == 6
    rel = max(abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for a, b in zip(one_h, two_h) for k in a if k.startswith("loss"))
    print(f"max relative loss difference over 6 steps: {rel:.3e}")
    for a, b in zip(one_h, two_h):
        losses = [k for k in a if k.startswith("loss")]
        assert losses and set(losses) == {k for k in b if k.startswith("loss")}
        for k in losses:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["iteration"], k, a[k], b[k])
    assert one_w.keys() == two_w.keys()
    diff = max(float((one_w[k].float() - two_w[k].float()).abs().max()) for k in one_w)
    print(f"max |w_1proc - w_2proc| after 6 steps: {diff:.3e}")
    assert diff < 1e-4
    moved = max(float((one_w[k].float() - load_file(str(next((stage_inputs / "teacher").rglob("*.safetensors"))))[k]
                       .float()).abs().max()) for k in one_w)
    assert moved > 1e-3                      # the comparison means something: training changed the weights


def test_a_global_batch_that_does_not_divide_is_refused(stage_inputs, tmp_path):
    params = yaml.safe_load((stage_inputs / "params.yaml").read_text())
    params["distill"]["batch_size"] = 7
    (stage_inputs / "params-odd.yaml").write_text(yaml.safe_dump(params))
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "components.stages", "distill", "--params",
           "params-odd.yaml", "--dataset", "dataset", "--teacher", "teacher", "--features", "feature_net",
           "--checkpoints", "ckpt-odd", "--out", "student-odd", "--plots", "losses-odd.csv"]
    r = subprocess.run(cmd, cwd=stage_inputs, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "distill.batch_size" in r.stderr and "7 does not divide over 2 processes" in r.stderr
    assert not (stage_inputs / "student-odd").exists()
