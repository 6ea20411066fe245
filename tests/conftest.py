"""Shared helpers: run `nettrain` as a user would (a subprocess) or in-process (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.font_manager  # noqa: F401 - builds matplotlib's font cache now, outside any test's output
import pytest

from nettrain.cli import main

# The tests point XDG_CACHE_HOME at their own dirs; matplotlib keeps its font cache where it found it, or it
# rebuilds it and says "generated new fontManager" in the output of whichever test imports it first.
os.environ["MPLCONFIGDIR"] = matplotlib.get_cachedir()

# Small, fast settings for tests that only need a run to exist.
FAST = ["trainer.max_epochs=2", "trainer.log_every_n_steps=5"]


def nettrain(*args: str, cwd: Path, check: bool = True, timeout: float = 300,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`nettrain ARGS...` in a subprocess, as from a shell; returns its exit code and output."""
    proc = subprocess.run([sys.executable, "-m", "nettrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"nettrain {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_in_process(*args: str) -> int:
    """`nettrain ARGS...` in this process (no interpreter start-up or torch import per call)."""
    try:
        return main(list(args))
    except SystemExit as e:
        return int(e.code or 0)


def train(tmp_path: Path, *overrides: str, name: str = "run") -> Path:
    """Train in-process into tmp_path/name and return the run dir (asserting success)."""
    run_dir = tmp_path / name
    code = run_in_process("train", f"hydra.run.dir={run_dir}", *overrides)
    assert code == 0, f"train exited {code}"
    return run_dir


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def history(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.json's epochs less their timings, which differ from run to run: what a resume must replay."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_samples_per_sec", "train_tokens_per_sec")}
            for r in metrics(run_dir)["history"]]


def save_malicious_checkpoint(path: Path, marker: Path) -> None:
    """A file that looks like a checkpoint but would create `marker` if it were ever unpickled."""
    import torch

    class WritesAFile:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"format": "nettrain-checkpoint", "model": WritesAFile()}, path)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits MLP trained for 3 epochs (val accuracy ~0.94), shared by the tests of the commands
    that use a trained model; they read it, and write only into their own subdirs of it."""
    tmp = tmp_path_factory.mktemp("digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        return train(tmp, "trainer.max_epochs=3")


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs from its own directory, so `outputs/` never lands in the repo, and caches (the decoded
    images of data.cache=true) go to its own dir, never the user's ~/.cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
