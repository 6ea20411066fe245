"""When to stop: divergence, early stopping, the overfitting warning, and the overfit sanity check."""

from __future__ import annotations

import math

import torch

from conftest import metrics, run_in_process
from nettrain.checkpoint import load_checkpoint


def test_a_learning_rate_too_high_stops_with_a_clear_message(tmp_path, capfd):
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "optimizer.lr=10") == 1

    err = capfd.readouterr().err
    assert "training diverged: loss=" in err and "at step 2 (epoch 1) with lr=10" in err
    assert "try optimizer.lr=1" in err
    recorded = metrics(run_dir)
    assert recorded["status"] == "diverged" and "diverged" in recorded["error"]


def test_divergence_later_in_a_run_leaves_best_pt_intact(tmp_path):
    run_dir = tmp_path / "run"
    # One-cycle to 1000x the base lr: fine at first, blows up as the lr climbs.
    code = run_in_process("train", f"hydra.run.dir={run_dir}", "optimizer=sgd", "optimizer.lr=0.01",
                          "scheduler=onecycle", "scheduler.max_lr_factor=1000", "scheduler.pct_start=0.9",
                          "trainer.max_epochs=6")
    assert code == 1
    recorded = metrics(run_dir)
    assert recorded["status"] == "diverged" and recorded["epochs"] >= 1
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["progress"]["epoch"] <= recorded["epochs"]
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())
    assert math.isclose(best["record"]["best"]["val_loss"], recorded["best"]["val_loss"])


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path, capfd):
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=20",
                          "early_stopping.patience=2", "early_stopping.min_delta=1.0") == 0
    recorded = metrics(run_dir)
    assert recorded["status"] == "stopped_early"
    assert recorded["epochs"] == 3 and recorded["best_epoch"] == 1
    assert "early stopping: val_loss has not improved for 2 epochs" in capfd.readouterr().err


def test_memorizing_is_warned_about_and_logged_to_tensorboard(tmp_path, capfd):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "debug=overfit", "trainer.max_epochs=15",
                          "data.batch_size=16", "optimizer.lr=0.003") == 0
    history = metrics(run_dir)["history"]
    assert history[-1]["train_loss"] < 0.1 < history[0]["train_loss"]  # it can learn one batch
    assert "started memorizing the training set" in capfd.readouterr().err
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    assert "warnings/text_summary" in events.Tags()["tensors"]
