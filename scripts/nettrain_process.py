"""`nettrain ARGS` in a fresh process, from this checkout, as a user runs it: the benchmarks' way to train and
export (imported by them; not a script of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def nettrain(*args: str) -> subprocess.CompletedProcess[str]:
    """Its output; a non-zero exit ends the benchmark with the command and the end of its stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "nettrain", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"nettrain {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc
