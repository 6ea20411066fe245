"""Checkpoints: atomic writes that survive kill -9 and a full disk; loading that never runs pickled code."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import metrics, run_in_process, save_malicious_checkpoint, train
from nettrain.errors import UserError
from nettrain.records.checkpoint import load_checkpoint, save_checkpoint


def test_a_malicious_checkpoint_is_refused_and_never_runs(tmp_path, capfd):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    save_malicious_checkpoint(evil, marker)

    with pytest.raises(UserError, match="refusing to load .*evil.pt: not a plain-tensor checkpoint; it holds pickled objects"):
        load_checkpoint(evil)
    assert run_in_process("train", f"resume={evil}") == 2
    assert len(capfd.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused_in_one_line(tmp_path):
    run_dir = train(tmp_path, "trainer.max_epochs=1")
    good = (run_dir / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")

    for name, reason in [("truncated.pt", "not a complete checkpoint"), ("notes.pt", "not a complete checkpoint"),
                         ("foreign.pt", "not a nettrain checkpoint")]:
        with pytest.raises(UserError, match=reason) as err:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(err.value)


SAVER = """
import sys, torch
from nettrain.records.checkpoint import save_checkpoint
state = {"model": {"w": torch.randn(1_000_000)}}
print("ready", flush=True)
i = 0
while True:
    state["step"] = i
    save_checkpoint(state, __import__("pathlib").Path(sys.argv[1]))
    i += 1
"""


def test_kill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(1)}, "step": -1}, path)
    for delay in (0.05, 0.21, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert isinstance(load_checkpoint(path)["step"], int)


def test_a_failed_write_keeps_the_previous_checkpoint_and_stops_clearly(tmp_path, monkeypatch, capfd):
    real_replace, calls = os.replace, {"last.pt": 0}

    def disk_full_on_second_last_pt(src, dst):
        if Path(dst).name == "last.pt":
            calls["last.pt"] += 1
            if calls["last.pt"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr("nettrain.files.os.replace", disk_full_on_second_last_pt)
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=3") == 1

    err = capfd.readouterr().err
    assert f"could not write {run_dir / 'checkpoints' / 'last.pt'}: No space left on device" in err
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] == 1
    assert metrics(run_dir)["status"] == "failed"
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_top_k_keeps_the_k_best_epochs_plus_last_and_best(tmp_path):
    run_dir = train(tmp_path, "trainer.max_epochs=5", "checkpoint.save_top_k=2", "model.hidden=[16]")
    history = metrics(run_dir)["history"]
    best_two = sorted(history, key=lambda r: r["val_loss"])[:2]
    expected = {f"epoch={r['epoch']:03d}-val_loss={r['val_loss']:.4f}.pt" for r in best_two}
    assert {p.name for p in (run_dir / "checkpoints").glob("epoch=*.pt")} == expected
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["progress"]["best_epoch"] == best_two[0]["epoch"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] == 5


def test_one_save_to_several_paths_writes_them_once_and_a_later_save_leaves_the_others(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint({"step": 1}, last, best)
    assert load_checkpoint(last)["step"] == load_checkpoint(best)["step"] == 1
    save_checkpoint({"step": 2}, last)  # renames a new file over last.pt: best.pt keeps its content
    assert (load_checkpoint(last)["step"], load_checkpoint(best)["step"]) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp files left
