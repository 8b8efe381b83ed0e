"""Who made a benchmark's figures: date, machine (without its host name), commit and command line -
stored in the result's JSON and printed on every generated docs page."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def machine() -> str:
    """This machine in words, without its host name: OS/kernel, CPU model and count, torch threads, CUDA device."""
    import torch

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        ncpu = len(os.sched_getaffinity(0))                      # what nproc says: the CPUs this process may use
    except AttributeError:
        ncpu = os.cpu_count()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    threads = torch.get_num_threads()
    cpu = cpu or platform.processor() or "unknown"
    return (f"{platform.platform()}, Python {platform.python_version()}; CPU: {cpu}, {ncpu} available; "
            f"torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}; CUDA: {cuda}")


def git_commit() -> str:
    """HEAD of the checkout, + ' (dirty)' when tracked files differ from it; 'unknown' outside git."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return head + (" (dirty)" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def provenance(argv: list[str]) -> dict:
    """Taken when the benchmark starts (the code and machine that produce the figures) and stored in the
    result's JSON, so that a page re-rendered later (--from-json) names the original run."""
    return {"started_utc": utc_now(), "machine": machine(), "commit": git_commit(), "argv": list(argv)}
