"""components/atomic.py: a failure mid-write leaves the old file or folder (or nothing), never half of one."""
import json
import os

import pytest

from components.atomic import atomic_dir, atomic_file, write_json, write_text


class Boom(RuntimeError):
    pass


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_file_is_replaced_whole_and_a_failure_keeps_the_old_one(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1})                                  # parents are made
    assert json.loads(target.read_text()) == {"a": 1} and target.read_text().endswith("\n")
    with pytest.raises(Boom):
        with atomic_file(target) as tmp:
            tmp.write_text('{"a": 2, "half')                        # half-written, then the writer dies
            raise Boom
    assert json.loads(target.read_text()) == {"a": 1}             # the old file, untouched
    assert _listing(target.parent) == ["out.json"]                # no temp file left behind
    write_text(target, "new")
    assert target.read_text() == "new" and _listing(target.parent) == ["out.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())   # an ordinary file, not mkstemp's 0600


def test_failure_before_the_first_write_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_file(tmp_path / "never.txt") as tmp:
            tmp.write_text("partial")
            raise Boom
    assert _listing(tmp_path) == []


def test_folder_is_replaced_whole_and_a_failure_keeps_the_old_one(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
        (tmp / "config.json").write_text("{}")
    assert _listing(target) == ["config.json", "weights"]
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("v2-half")
            raise Boom
    assert (target / "weights").read_text() == "v1" and _listing(tmp_path) == ["model"]
    with atomic_dir(target, durable=True) as tmp:                 # a new folder replaces the old one whole
        (tmp / "weights").write_text("v2")
    assert _listing(target) == ["weights"] and (target / "weights").read_text() == "v2"
    assert _listing(tmp_path) == ["model"]                         # neither the temp nor the old folder stays


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
