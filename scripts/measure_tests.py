"""Time the test suite as `make test` runs it and write docs/test-durations.md (date, machine, commit).

    .venv/bin/python scripts/measure_tests.py [--out docs/test-durations.md] [-- extra pytest args]

Runs `python -m pytest` with the options of the Makefile's test target plus --durations=30, prints
pytest's own output as it goes, and writes the page only when pytest passed. The figures on the
page are pytest's: the wall-clock of the whole session and its slowest 30 phases. Run it alone:
a second heavy process on a 2-core machine distorts every figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pytest_args() -> list[str]:
    """The pytest options of `make test` (the Makefile's PYTEST_ARGS line)."""
    m = re.search(r"^PYTEST_ARGS\s*:?=\s*(.*)$", (ROOT / "Makefile").read_text(), re.M)
    return shlex.split(m.group(1)) if m else []


def machine() -> str:
    cpu = ""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        m = re.search(r"^model name\s*:\s*(.+)$", info.read_text(), re.M)
        cpu = m.group(1).strip() if m else ""
    return f"{platform.platform()}, {cpu or platform.processor()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = " (dirty)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (git("rev-parse", "HEAD") or "unknown") + dirty


def render(cmd: list[str], seconds: float, summary: str, durations: list[str], when: str, where: str,
           sha: str) -> str:
    rows = "\n".join(f"| {d.split()[0]} | {d.split()[1]} | `{' '.join(d.split()[2:])}` |" for d in durations)
    return f"""# Test suite duration

Written by `scripts/measure_tests.py` on {when} on {where}, at commit `{sha}`.

Command: `{' '.join(cmd)}` (the pytest part of `make test`; the install before it is not timed).

- pytest summary: `{summary}`
- wall-clock of the pytest process: {seconds:.0f} s

Slowest phases (pytest `--durations`; with `-n 2` the two workers' phases overlap, so they add up
to more than the wall-clock):

| seconds | phase | test |
|---|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "test-durations.md"))
    ap.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    a = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "pytest", *pytest_args(), "--durations=30", *a.extra]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    if rc != 0:
        print(f"measure_tests: pytest exited {rc}; {a.out} not written", file=sys.stderr)
        return rc
    durations = [ln.strip() for ln in lines if re.match(r"^\s*[\d.]+s (setup|call|teardown) ", ln)]
    summary = next((ln.strip("= ").strip() for ln in reversed(lines) if re.search(r"\d+ passed", ln)), "")
    from components.atomic import write_text

    shown = ["python -m pytest", *pytest_args(), *a.extra]
    write_text(a.out, render(shown, seconds, summary, durations, when, machine(), commit()))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
