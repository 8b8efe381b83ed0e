"""Multi-Student Distillation (components/methods/msd.py) and its router (components/diffusion/routed.py): the class
partition and its bad input, the router's order on shuffled mixed labels, a student never seeing another subset's
data, the smaller students' three stages, the routed bundle on disk and its export that stock diffusers loads."""
import copy
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from components.config import ConfigError
from components.diffusion import load_denoiser, save_denoiser, state_hash
from components.diffusion.generate import generate
from components.diffusion.routed import RoutedDenoiser
from components.methods import build_method, distill, parse_distill_config
from components.methods.msd import (branches, class_subsets, fan_out_seconds, merged_history, partition, route,
                                    subset_data)

TINY = dict(method="msd", iterations=2, batch_size=16, dfake_gen_update_ratio=2, log_every=1, fid_every=0,
            checkpoint_every=0, seed=0)


def one_step(teacher, seed):
    """A one-step copy of the teacher with its weights moved (so students differ from each other)."""
    s = copy.deepcopy(teacher).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in s.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    s.sampling = {"sampler": "fewstep", "sigmas": [s.sigma_max, 0.0]}
    return s


@pytest.fixture(scope="module")
def routed(tiny_teacher):
    """Three students owning classes {0,3,6,9}, {1,4,7}, {2,5,8}."""
    return RoutedDenoiser([one_step(tiny_teacher, k) for k in range(3)], [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]])


# -- the partition -------------------------------------------------------------------------------------------------
def test_the_default_partition_balances_class_counts_and_covers_every_class_once():
    equal = class_subsets([100] * 10, 4)
    assert sorted(c for s in equal for c in s) == list(range(10))              # every class exactly once
    assert sorted(len(s) for s in equal) == [2, 2, 3, 3]
    counts = [500, 10, 10, 10, 10, 10, 10, 10, 10, 10]                          # one big class: a subset of its own
    uneven = class_subsets(counts, 2)
    assert uneven == [[0], list(range(1, 10))]
    assert class_subsets([5, 5], 2) == [[0], [1]] and class_subsets([3] * 10, 1) == [list(range(10))]


def test_the_partition_on_the_data_uses_the_training_split(digits):
    cfg = parse_distill_config({**TINY, "students": 4})
    subsets = partition(cfg, digits)
    _, labels = digits.split("train")
    totals = [int(torch.isin(labels, torch.tensor(s)).sum()) for s in subsets]
    assert sorted(c for s in subsets for c in s) == list(range(10))
    assert max(totals) - min(totals) <= max(torch.bincount(labels).tolist())   # greedy: within one class's count


@pytest.mark.parametrize("values, match", [
    ({"students": 2, "partition": [[0, 1, 2, 3, 4], [5, 6, 7, 8]]}, r"class\(es\) \[9\] are in no subset"),
    ({"students": 2, "partition": [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8, 9]]}, r"class 4 is in subsets 0 and 1"),
    ({"students": 3, "partition": [[0, 1, 2, 3, 4], [], [5, 6, 7, 8, 9]]}, r"subset 1 is empty"),
    ({"students": 2, "partition": [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]}, r"1 subset\(s\) but distill.students is 2"),
    ({"students": 2, "partition": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]}, r"class 10 in subset 1 is not a class"),
    ({"students": 11}, r"11 students for 10 classes"),
])
def test_a_bad_partition_is_one_line_naming_the_field(values, match):
    """Checked before any step runs (load_params: the declared classes of params.yaml), one line each."""
    from components.params import load_params

    with pytest.raises(ConfigError, match=match) as err:
        load_params("params.yaml", distill={"method": "msd", **values})
    assert "\n" not in str(err.value) and re.search(r"distill\.(partition|students)", str(err.value))


def test_a_bad_partition_is_refused_on_the_data_too(digits, tiny_teacher):
    """Without declared classes the data's classes decide, when the method is built (no step has written anything)."""
    with pytest.raises(ConfigError, match=r"distill.partition.*class\(es\) \[8, 9\] are in no subset"):
        build_method(tiny_teacher, {**TINY, "students": 2, "partition": [[0, 1, 2, 3], [4, 5, 6, 7]], "subset": 0},
                     digits)
    with pytest.raises(ConfigError, match=r"distill.subset.*one subset"):
        build_method(tiny_teacher, {**TINY, "students": 2}, digits)


# -- the router ----------------------------------------------------------------------------------------------------
def test_the_router_runs_each_student_on_its_rows_and_keeps_the_batch_order(routed):
    g = torch.Generator().manual_seed(0)
    labels = torch.randperm(10, generator=g).repeat(3)[torch.randperm(30, generator=g)]   # shuffled, mixed
    x = torch.randn(30, 1, 8, 8, generator=g) * 5.0
    sigma = torch.rand(30, generator=g) * 10 + 0.1
    with torch.no_grad():
        out = routed(x, sigma, labels)
        for i in range(30):                                  # row i is its own student's output, in place
            k = next(k for k, s in enumerate(routed.subsets) if int(labels[i]) in s)
            own = routed.students[k](x[i:i + 1], sigma[i:i + 1], labels[i:i + 1])
            torch.testing.assert_close(out[i:i + 1], own, rtol=1e-5, atol=1e-5)
            other = routed.students[(k + 1) % 3](x[i:i + 1], sigma[i:i + 1], labels[i:i + 1])
            assert not torch.allclose(out[i:i + 1], other, atol=1e-4)            # the students do differ
    # sampling a shuffled batch = sampling each label alone with the same noise (generate draws z for the batch)
    images = generate(routed, labels, seed=3, batch_size=30).images
    z = torch.randn((30, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        alone = torch.cat([routed.students[int(routed.route[int(y)])](z[i:i + 1] * routed.sigma_max, routed.sigma_max,
                                                                       labels[i:i + 1]) for i, y in enumerate(labels)])
    torch.testing.assert_close(images, alone.clamp(-1, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"class labels must lie in 0..9"):
        routed(x[:2], sigma[:2], torch.tensor([0, 10]))             # the null class is not routed


def test_a_routed_student_saves_and_loads_as_one_model(routed, tmp_path):
    save_denoiser(routed, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["routing.json", "student_0", "student_1", "student_2"]
    back = load_denoiser(tmp_path / "r")
    assert isinstance(back, RoutedDenoiser) and back.subsets == routed.subsets and back.sampling == routed.sampling
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([9, 8, 7, 2, 1, 0])
    with torch.no_grad():
        torch.testing.assert_close(back(x * 80, 80.0, y), routed(x * 80, 80.0, y))
    table = json.loads((tmp_path / "r" / "routing.json").read_text())
    table["subsets"] = [[0, 3, 6, 9], [1, 4, 7], [2, 5]]                       # class 8 routed nowhere
    (tmp_path / "r" / "routing.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=r"routing.json'.*class\(es\) \[8\] are in no subset"):
        load_denoiser(tmp_path / "r", what="student")


# -- training ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("small", [False, True], ids=["same_size", "smaller"])
def test_a_student_sees_only_its_subset_and_the_stages_chain(digits, tiny_teacher, small, one_thread):
    """Spy on every batch, the fake score's training inputs and the real score's calls: only the subset's labels
    and real images. Smaller students: tsm -> dm (no GAN) -> adv, each from the previous stage's student."""
    from components.diffusion.pairs import TeacherPairs

    cfg = parse_distill_config({**TINY, "students": 3, "student_channels": [8, 16] if small else None,
                                "tsm_iterations": 2, "dm_iterations": 1, "regression_weight": 0.5})
    n = 60
    pairs = TeacherPairs(torch.randn(n, 1, 8, 8), torch.arange(n) % 10, torch.rand(n, 1, 8, 8) * 2 - 1,
                         state_hash(tiny_teacher), {"sampler": "heun", "sigmas": [80.0, 0.0]})
    (k, stages), = [b for b in enumerate(branches(cfg))][1:2]
    subset = partition(cfg, digits)[k]
    own = set(subset)
    real_images = {tuple(x.flatten().tolist()) for x in subset_data(digits, subset).images}
    assert [name for name, _ in stages] == (["tsm", "dm", "adv"] if small else ["dmd2"])
    student, seen_labels, seen_real = None, set(), []
    for name, config in stages:
        method = build_method(tiny_teacher, config, digits, copy.copy(pairs), init=student)
        assert set(method.pairs.labels.tolist()) <= own                     # regression pairs of its classes only
        assert set(method.data.labels.tolist()) == own                       # the trainer draws from these alone
        calls = []
        for net in (method.real, getattr(method, "fake", None)):
            if net is not None:
                net.register_forward_pre_hook(lambda m, args: calls.append(set(args[2].tolist())))
        step = method.train_step

        def spy(batch, step=step):
            seen_labels.update(batch["class_labels"].tolist())
            seen_real.extend(tuple(x.flatten().tolist()) for x in batch["real"])
            return step(batch)

        method.train_step = spy
        distill(method, progress=False)
        assert calls and all(c <= own for c in calls)                         # teacher and fake score: its labels
        if name == "dm":
            assert method.D is None                                           # no GAN in stage 2
        if name in ("adv", "dmd2"):
            assert method.D is not None
        if student is not None:
            assert method.run_identity()["init_sha256"] != method.teacher_sha256
        student = method.student()
    assert seen_labels == own and set(seen_real) <= real_images
    n_student = sum(p.numel() for p in student.parameters())
    n_teacher = sum(p.numel() for p in tiny_teacher.parameters())
    assert (n_student < n_teacher / 2) if small else n_student == n_teacher


def test_the_fan_out_history_and_wall_clock():
    h = [[[{"iteration": 2, "loss_tsm": 1.0, "distill_seconds": 3.0}], [{"iteration": 1, "loss_dm": 0.5,
                                                                         "distill_seconds": 2.0}]],
         [[{"iteration": 2, "loss_tsm": 0.9, "distill_seconds": 4.0}], [{"iteration": 1, "loss_dm": 0.4,
                                                                         "distill_seconds": 7.0}]]]
    merged = merged_history(h)
    assert [r["iteration"] for r in merged] == [2, 3]
    assert merged[1]["loss_dm[s1]"] == 0.4 and merged[0]["loss_tsm[s0]"] == 1.0
    assert fan_out_seconds(h) == {"fan_out_seconds_one_machine": 16.0, "fan_out_seconds_longest_branch": 11.0}


def test_route_needs_one_student_per_subset(routed, digits):
    cfg = parse_distill_config({**TINY, "students": 3})
    assert route(list(routed.students), cfg, digits).subsets == partition(cfg, digits)
    with pytest.raises(ConfigError, match=r"distill.students.*3 subsets but 2 students"):
        route(list(routed.students)[:2], cfg, digits)


# -- export --------------------------------------------------------------------------------------------------------
STOCK_ONLY = r"""   # run outside the repository: only diffusers, torch and numpy importable
import json, re, sys, numpy
card = open(sys.argv[1] + "/README.md").read()
code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("<this folder>", sys.argv[1])
code = code.replace("images = sample([0, 5, 3, 3, 9], seed=0)", "")
scope = {}
exec(code, scope)
labels = json.loads(sys.argv[2])
numpy.save(sys.argv[3], scope["sample"](labels, seed=5).numpy())
"""


def test_the_bundle_exports_and_loads_with_diffusers_alone(routed, tmp_path):
    """One stock-diffusers folder per student (+ ONNX each), routing.json, and the model card's loader - run in a
    fresh process with only diffusers - samples a shuffled mixed batch in order, as the project's sampler does
    each student's rows."""
    from components.export import export_student

    two = RoutedDenoiser(list(routed.students)[:2], [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])
    folder = export_student(two, tmp_path / "bundle", {"method": "msd", "metrics": {"student_fid": 3.0},
                                                        "teacher_nfe": 5})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "routing.json", "student_0", "student_1"]
    for k in range(2):
        names = {p.name for p in (folder / f"student_{k}").iterdir()}
        assert {"model_index.json", "unet", "scheduler", "onnx", "README.md"} <= names
    labels = [7, 0, 3, 3, 8, 1, 9, 2]
    out = tmp_path / "stock.npy"
    r = subprocess.run([sys.executable, "-c", STOCK_ONLY, str(folder), json.dumps(labels), str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ours = torch.zeros(len(labels), 1, 8, 8)            # the project's sampler, student k on its rows from seed 5 + k
    for k, subset in enumerate(two.subsets):
        rows = [i for i, c in enumerate(labels) if c in subset]
        ours[rows] = generate(two.students[k], torch.tensor(labels)[rows], seed=5 + k, batch_size=len(rows)).images
    ours = ((ours + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(np.load(out) - ours).max())
    print(f"max abs diff, the card's diffusers-only loader vs the project's sampler: {diff:.2e}")
    assert diff <= 1e-4
    assert isinstance(load_denoiser(folder), RoutedDenoiser)                 # fewstep's loader: one model
