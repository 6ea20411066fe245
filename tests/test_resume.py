"""Never lose a run: kill -9 or Ctrl-C a run, resume it, and end exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import history, metrics, run_in_process, train

# Slow enough epochs (~1 s) that a signal lands inside one; cosine + dropout + mid-epoch checkpoints
# make any slip in restoring the schedule, RNG or data order show in the weights. 3 epochs by a step
# budget (179 steps an epoch): a resumed run must plan them from its config and data as the first did.
RUN = ["trainer.max_steps=500", "model.hidden=[256,256]", "model.dropout=0.3", "data.batch_size=8",
       "scheduler=cosine", "trainer.checkpoint_every_n_steps=40", "trainer.log_every_n_steps=10"]



def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _val_loss_points(run_dir: Path) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return len(EventAccumulator(str(run_dir)).Reload().Scalars("loss/val"))


def _start(run_dir: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nettrain", "train", f"hydra.run.dir={run_dir}", *RUN], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, reached: Callable[[], bool], what: str) -> None:
    """Poll (2 ms) until `reached()` while the run is alive: polling, not sleeping, keeps a signal
    inside the intended epoch however fast the machine is."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if reached():
                return
        except (OSError, ValueError, KeyError):  # a file not there yet
            pass
        time.sleep(0.002)
    raise AssertionError(f"the run never reached {what}")


def _wait_for_epochs(run_dir: Path, epochs: int, proc: subprocess.Popen) -> None:
    _wait(proc, lambda: json.loads((run_dir / "metrics.json").read_text())["epochs"] >= epochs, f"epoch {epochs}")


def _wait_for_new_checkpoint(path: Path, proc: subprocess.Popen) -> None:
    """Checkpoints are replaced atomically, so a new inode means the next save has landed."""
    seen = path.stat().st_ino
    _wait(proc, lambda: path.stat().st_ino != seen, f"a new {path.name}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    return train(tmp_path_factory.mktemp("reference"), *RUN)


def test_kill_9_in_epoch_3_then_resume_is_bit_identical(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, tmp_path)
    _wait_for_epochs(run_dir, 2, proc)
    _wait_for_new_checkpoint(run_dir / "checkpoints" / "last.pt", proc)  # epoch 3's first mid-epoch save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert metrics(run_dir)["status"] == "running"
    assert _val_loss_points(run_dir) == 2  # the curves of the finished epochs reached disk before the kill

    assert run_in_process("train", f"resume={run_dir}") == 0  # in this process: the resume is what is tested

    assert metrics(run_dir)["status"] == "completed" and metrics(run_dir)["epochs"] == 3
    assert history(run_dir) == history(reference)
    ours, theirs = _weights(run_dir), _weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_prints_the_resume_command(tmp_path, reference, sig, code):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, tmp_path)
    _wait_for_epochs(run_dir, 1, proc)
    _wait_for_new_checkpoint(run_dir / "checkpoints" / "last.pt", proc)  # inside epoch 2
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == code
    assert metrics(run_dir)["status"] == "interrupted"
    assert f"nettrain train resume={run_dir}" in stderr
    if sig == signal.SIGINT:  # the resumed run ends exactly like the uninterrupted one
        assert run_in_process("train", f"resume={run_dir}") == 0
        assert history(run_dir) == history(reference)
        ours, theirs = _weights(run_dir), _weights(reference)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_resume_may_extend_training_but_not_change_the_model(tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2") == 0
    before = (run_dir / ".hydra" / "config.yaml").read_text()

    assert run_in_process("train", f"resume={run_dir}", "model.dropout=0.5") == 2
    assert metrics(run_dir)["status"] == "completed"  # the refused resume touched nothing
    assert run_in_process("train", f"resume={run_dir}") == 2  # already finished: says to raise max_epochs

    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=3") == 0
    assert metrics(run_dir)["epochs"] == 3 and len(metrics(run_dir)["history"]) == 3
    assert (run_dir / ".hydra" / "config.yaml").read_text() == before  # the run's own config is kept


def test_same_seed_same_metrics(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2") == 0
    assert history(runs[0]) == history(runs[1])
    recorded = metrics(runs[0])
    assert recorded["seed"] == 0
    assert recorded["environment"]["torch"] == torch.__version__ and recorded["environment"]["nettrain"]


def test_an_existing_run_dir_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=1") == 0
    before = (run_dir / "metrics.json").read_text()
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=1") == 2
    assert (run_dir / "metrics.json").read_text() == before


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"dir" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("contents", [{}, {"notes.txt": b"mine"}, {".hydra/config.yaml": b"x: 1\n", "train.log": b"started\n"}],
                         ids=["empty folder", "user files", "run killed before its first checkpoint"])
def test_a_refused_resume_changes_nothing_on_disk(tmp_path, contents, capfd):
    folder = tmp_path / "parent" / "folder"
    folder.mkdir(parents=True)
    for name, data in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    before = _tree(tmp_path)

    assert run_in_process("train", f"resume={folder}") == 2

    assert _tree(tmp_path) == before  # the folder, its files and its parent are all still there
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"nettrain: no checkpoint in {folder}: expected {folder / 'checkpoints' / 'last.pt'}"]


def test_a_refused_new_run_removes_only_the_dirs_it_made(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    assert run_in_process("train", f"hydra.run.dir={existing}", "trainer.max_epochs=0") == 2
    assert existing.is_dir()  # an empty dir the user made stays
    assert run_in_process("train", f"hydra.run.dir={tmp_path / 'new' / 'a' / 'b'}", "trainer.max_epochs=0") == 2
    assert not (tmp_path / "new").exists()  # the run dir and the parents made for it are gone
