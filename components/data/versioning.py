"""Lineage: the dataset's DVC hash and the code's git commit, computed without running DVC.

`dvc_md5` reproduces DVC 3's content hash (what `dvc add` writes into a .dvc file): the md5 of a
file's bytes, or for a folder the md5 of the JSON list of {md5, relpath} of its files plus
".dir". Equal data <=> equal hash, on any machine, so it can key ZenML's step cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml


def _file_md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - DVC's content hash, not a security measure
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dvc_md5(path: str | os.PathLike) -> str:
    """DVC's md5 of a file or a folder (folder hashes end in '.dir'). Hidden entries count too."""
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}': no such file or folder")
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    entries = [{"md5": _file_md5(p), "relpath": p.relative_to(path).as_posix()} for p in files]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"  # noqa: S324


def dvc_tracking(path: str | os.PathLike) -> dict:
    """The .dvc file that tracks `path` (itself or a folder around it) and its recorded hash, if any: the
    nearest folder's .dvc files are read first, any of them may name it among its outs (the top-level data.dvc
    names data/digits.npz; `dvc add data/x.npz` writes data/x.npz.dvc beside it)."""
    p = Path(os.path.normpath(Path(path).absolute()))
    for folder in p.parents:
        for dvc_file in sorted(f for f in folder.glob("*.dvc") if f.is_file()):
            try:
                outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
            except (yaml.YAMLError, AttributeError) as e:
                raise ValueError(f"{dvc_file}: not a DVC file (expected YAML with a list of outs): {e}") from None
            for out in outs:
                tracked = Path(os.path.normpath(folder / str(out.get("path", ""))))
                if tracked == p or tracked in p.parents:
                    return {"dvc_file": os.path.relpath(dvc_file), "dvc_path": os.path.relpath(tracked),
                            "dvc_md5": str(out.get("md5", ""))}
    return {"dvc_file": "", "dvc_path": "", "dvc_md5": ""}


def git_info(cwd: str | os.PathLike | None = None) -> dict:
    """Commit and dirty flag of the checkout (empty when not a git checkout or git is missing)."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "", "git_dirty": False}
    return {"git_commit": commit, "git_dirty": dirty}


def data_lineage(path: str | os.PathLike) -> dict:
    """What a run records about its data: the content hash of `path`, and of the DVC-tracked folder
    around it as committed (.dvc) and as found in the workspace."""
    tracking = dvc_tracking(path)
    info = {"data_path": str(path), "data_md5": dvc_md5(path), **tracking, "dvc_workspace_md5": ""}
    if tracking["dvc_path"]:
        info["dvc_workspace_md5"] = dvc_md5(tracking["dvc_path"]) if Path(tracking["dvc_path"]) != Path(path) \
            else info["data_md5"]
    info["dvc_clean"] = bool(tracking["dvc_md5"]) and info["dvc_workspace_md5"] == tracking["dvc_md5"]
    return info


def run_lineage(config: dict, params_file: str | None = None) -> dict:
    """Everything a run records to say which data, code and parameters made it."""
    from datetime import datetime, timezone

    params_sha = hashlib.sha256(Path(params_file).read_bytes()).hexdigest() if params_file else ""
    return {**git_info(), **data_lineage(config["data"]["path"]), "params_file": params_file or "",
            "params_sha256": params_sha, "config": config,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    """`python -m components.data.versioning [path]`: does the data on disk match its .dvc file?"""
    import sys

    path = (argv if argv is not None else sys.argv[1:]) or ["data/digits.npz"]
    info = data_lineage(path[0])
    if not info["dvc_file"]:
        print(f"{path[0]}: md5 {info['data_md5']}; not tracked by DVC (run `dvc add {path[0]}`)")
    elif info["dvc_clean"]:
        print(f"{info['dvc_path']}: matches {info['dvc_file']} (md5 {info['dvc_md5']})")
    else:
        print(f"{info['dvc_path']}: md5 {info['dvc_workspace_md5']} differs from {info['dvc_file']} "
              f"({info['dvc_md5']}); run `dvc add {info['dvc_path']}` to record your data, or `dvc checkout` to restore")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
