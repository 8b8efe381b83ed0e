"""Shared fixtures: telemetry off, tiny models, the digits dataset."""
import atexit
import os
import shutil
import tempfile

if os.environ.get("PYTEST_XDIST_WORKER"):       # two workers on two cores: one torch thread each, children too
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
# ZenML state of the test process itself (step imports, .entrypoint() calls) in a throwaway folder per
# worker: tests never read or write the user's ~/.config/zenml, and two workers never race on one store
_ZENML_HOME = tempfile.mkdtemp(prefix=f"fewstep-tests-zenml-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
atexit.register(shutil.rmtree, _ZENML_HOME, True)
os.environ["ZENML_CONFIG_PATH"] = _ZENML_HOME
os.environ["ZENML_REPOSITORY_PATH"] = os.path.join(_ZENML_HOME, "repo")     # an empty one: no .zen is read
os.makedirs(os.environ["ZENML_REPOSITORY_PATH"])
# steps are imported at collection: under xdist the worker's main module has no file for ZenML to
# take the source root from, so name it (the repository root), as the pipeline tests' subprocesses do
os.environ.setdefault("ZENML_CUSTOM_SOURCE_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


# `make test` runs pytest on 2 workers (pytest-xdist, --dist loadgroup). A group runs whole on one worker, so a
# module's (or a session's) expensive fixture is built once: by default each test file is its own group; the
# files that read the session's shared pipeline runs form one; tests listed in UNGROUPED spread freely.
# The session's ZenML runs and DVC repro are each built once for both workers (shared_once), so the DVC tests
# (their own group) run beside the pipeline tests; only their last test waits for the ZenML runs.
SHARED_GROUPS = {"tests/pipelines/test_dmd2_pipeline.py": "zenml_store",
                 "tests/pipelines/test_guided_pipeline.py": "zenml_store",
                 "tests/pipelines/test_msd_pipeline.py": "zenml_store",
                 "tests/review/test_dashboard.py": "zenml_store",
                 "tests/components/test_onnx_export.py": "tests/components/test_export.py"}   # one export
UNGROUPED: set[str] = set()          # files whose tests may spread over both workers


@pytest.hookimpl(tryfirst=True)       # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        path = item.nodeid.split("::")[0]
        if path not in UNGROUPED and not any(m.name == "xdist_group" for m in item.iter_markers()):
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(path, path)))
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


@pytest.fixture
def one_thread():
    """In-process runs on one intra-op thread, as the launched subprocesses (OMP_NUM_THREADS=1): the
    same float summation order as theirs, and faster for these tiny nets."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_image_folder(root, classes=("cat", "dog"), n=12, size=(10, 10), mode="RGB", seed=0):
    """root/<class>/<i>.png of seeded random pixels: a valid image-folder dataset."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / c / f"{i}.png")


def shared_once(tmp_path_factory, name: str, build) -> dict:
    """An expensive session fixture built once for all xdist workers (the pattern of pytest-xdist's docs):
    the first worker to ask runs build(folder) under a file lock in the session's shared temp root and
    saves its JSON result; a worker asking later (or waiting on the lock) reads that result."""
    import json

    from filelock import FileLock

    from components.atomic import write_json

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent                     # the session's basetemp: shared by the workers
    done = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            folder = root / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write_json(done, build(folder))          # atomic: a worker never reads half a result
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def zenml_store(tmp_path_factory, digits_npz):
    """A throwaway ZenML store (never the user's stack) holding the tiny dmd2_pipeline runs (reject, pass,
    changed data), made once per session and read by the end-to-end, DVC-vs-ZenML and dashboard tests
    (tests/pipelines/conftest.py: tiny_runs), whichever worker they run on."""
    from tests.pipelines.conftest import make_zenml_env, tiny_runs

    def build(folder):
        (folder / "zenml").mkdir()
        (folder / "runs").mkdir()
        env = make_zenml_env(folder / "zenml")
        return {"env": env, "runs": tiny_runs(folder / "runs", env, digits_npz)}

    return shared_once(tmp_path_factory, "zenml_store", build)


@pytest.fixture(scope="session")
def zenml_env(zenml_store):
    return zenml_store["env"]


@pytest.fixture(scope="session")
def pipeline_runs(zenml_store):
    return zenml_store["runs"]
