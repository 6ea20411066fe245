"""When to stop: divergence, early stopping, the overfitting warning, and the overfit sanity check."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import metrics, run_in_process
from nettrain.records.checkpoint import load_checkpoint


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


def test_a_step_budget_trains_whole_epochs_and_the_first_limit_wins(tmp_path, capfd):
    # The digits' 1,437 training images in batches of 64: 22 steps an epoch; 50 steps -> 3 epochs.
    budget = tmp_path / "budget"
    assert run_in_process("train", f"hydra.run.dir={budget}", "trainer.max_steps=50", "data.batch_size=64",
                          "scheduler=cosine") == 0
    assert "trainer.max_steps=50: 3 epochs of 22 steps" in capfd.readouterr().err
    recorded = metrics(budget)
    assert recorded["epochs"] == 3 and [h["step"] for h in recorded["history"]] == [22, 44, 66]
    config = load_checkpoint(budget / "checkpoints" / "last.pt")["config"]
    # The cosine schedule spans the 66 steps: a third of the way, the lr is 0.75 of its peak (0.59 over 50 steps).
    assert recorded["history"][0]["lr"] == pytest.approx(0.75 * config["optimizer"]["lr"])

    assert run_in_process("train", f"hydra.run.dir={tmp_path / 'epochs'}", "trainer.max_steps=500",
                          "trainer.max_epochs=2") == 0
    assert "(trainer.max_epochs=2 comes first)" in capfd.readouterr().err
    assert metrics(tmp_path / "epochs")["epochs"] == 2

    # Finished by its step budget, the run says which limit to raise, and goes on when it is raised.
    assert run_in_process("train", f"resume={budget}", "trainer.max_epochs=30") == 2
    assert capfd.readouterr().err.strip().splitlines()[-1].endswith(
        "already finished 3 epochs of trainer.max_steps=50; pass a larger trainer.max_steps to train on")
    assert run_in_process("train", f"resume={budget}", "trainer.max_epochs=3") == 2  # both limits give 3: raise both
    assert capfd.readouterr().err.strip().splitlines()[-1].endswith(
        "epochs of trainer.max_epochs=3 and trainer.max_steps=50; pass a larger trainer.max_epochs and trainer.max_steps to train on")
    assert run_in_process("train", f"resume={budget}", "trainer.max_steps=70") == 0
    assert metrics(budget)["epochs"] == 4


def test_a_bad_step_budget_is_one_line(tmp_path, capfd):
    for value, shown in (("0", "0"), ("2.5", "2.5"), ("many", "'many'")):
        assert run_in_process("train", f"trainer.max_steps={value}") == 2
        assert capfd.readouterr().err.strip().splitlines()[-1] == \
            f"nettrain: invalid trainer.max_steps={shown}: must be null or an integer >= 1"
    assert not any((tmp_path / "outputs").rglob("*"))  # no run dir
