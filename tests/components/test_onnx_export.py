"""ONNX export: onnxruntime reproduces the project's one-step sampler, any batch size.

The file under test is the onnx/model.onnx that export_student writes with export_onnx(student, ...):
one dynamo export (~10 s on 2 CPUs) per session, shared with test_export (tests/components/test_export.py:
one_step_export), instead of a second export of the same student here."""
import copy

import numpy as np
import pytest
import torch

from components.config import ConfigError
from components.diffusion.generate import generate
from components.onnx_export import export_onnx, run_onnx
from tests.components.test_export import one_step_export


@pytest.fixture(scope="module")
def one_step(request, tiny_teacher, tmp_path_factory):
    return one_step_export(request.config, tiny_teacher, tmp_path_factory)


@pytest.fixture(scope="module")
def one_step_student(one_step):
    return one_step[0]


@pytest.fixture(scope="module")
def onnx_file(one_step):
    return one_step[1] / "onnx" / "model.onnx"


def noise_like_generate(student, n, seed):
    """The unit-variance noise generate() draws for one batch of n with this seed (it then scales by sigma_max)."""
    c, s = student.unet.config.in_channels, student.unet.config.sample_size
    return torch.randn((n, c, s, s), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 9, 10], [7]])          # two batch sizes, null class included
def test_onnxruntime_reproduces_the_project_sampler(onnx_file, one_step_student, labels):
    ours = generate(one_step_student, torch.tensor(labels), seed=7, batch_size=len(labels)).images.numpy()
    got = run_onnx(onnx_file, noise_like_generate(one_step_student, len(labels), 7), labels)
    assert got.shape == ours.shape and got.dtype == np.float32
    diff = float(np.abs(got - ours).max())
    print(f"max abs diff onnxruntime vs project sampler (N={len(labels)}): {diff:.2e}")
    assert diff <= 1e-4
    assert got.min() >= -1 and got.max() <= 1


def test_export_refuses_a_multistep_student(tmp_path, one_step_student):
    s = copy.deepcopy(one_step_student)
    s.sampling = {"sampler": "fewstep", "sigmas": [80.0, 1.0, 0.0]}
    with pytest.raises(ConfigError, match="only one-step"):
        export_onnx(s, tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


def test_a_failed_export_leaves_no_half_written_file(tmp_path, one_step_student, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")

    def broken_export(model, args, f, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(one_step_student, target)
    assert target.read_bytes() == b"previous"                         # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]     # no temp file left behind
