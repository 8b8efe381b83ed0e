"""Shared fixtures: telemetry off, tiny models, the digits dataset."""
import os

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from components.config import DataConfig, TeacherConfig  # noqa: E402
from components.data import load_dataset  # noqa: E402
from components.data.builtin import materialize_digits  # noqa: E402

TINY_TEACHER = dict(train_steps=20, batch_size=32, block_out_channels=(16, 32), norm_num_groups=4,
                    sampler_steps=3, seed=0)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory):
    """The built-in digits materialised as an npz in a temp folder (tests never need the repo's data/)."""
    return str(materialize_digits(tmp_path_factory.mktemp("data") / "digits.npz"))


@pytest.fixture(scope="session")
def digits(digits_npz):
    return load_dataset(DataConfig(path=digits_npz))


@pytest.fixture(scope="session")
def tiny_teacher_cfg():
    return TeacherConfig(**TINY_TEACHER)


@pytest.fixture(scope="session")
def tiny_teacher(digits, tiny_teacher_cfg):
    from components.teacher import get_teacher

    teacher, _ = get_teacher(tiny_teacher_cfg, digits, progress=False)
    return teacher


def write_image_folder(root, classes=("cat", "dog"), n=12, size=(10, 10), mode="RGB", seed=0):
    """root/<class>/<i>.png of seeded random pixels: a valid image-folder dataset."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / c / f"{i}.png")
