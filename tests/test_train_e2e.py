"""`nettrain train` end to end, as the README shows it."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, metrics, nettrain, train


def test_default_run_learns_digits_and_writes_the_run_dir(tmp_path):
    proc = nettrain("train", cwd=tmp_path)
    (run_dir,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    m = metrics(run_dir)
    assert m["status"] == "completed"
    assert m["best"]["val_accuracy"] >= 0.97
    assert len(m["history"]) == m["epochs"] == 20
    assert set(m["history"][0]) >= {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr", "seconds"}
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "config", "spec"} <= set(ckpt)
        assert ckpt["spec"]["class_names"] == [str(i) for i in range(10)]
    assert "best epoch" in proc.stderr and f"tensorboard --logdir {run_dir}" in proc.stderr


def test_tensorboard_has_train_and_val_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = train(tmp_path, *FAST)
    events = EventAccumulator(str(run_dir)).Reload()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("loss/val")] == pytest.approx([r["val_loss"] for r in metrics(run_dir)["history"]])


def test_relative_paths_are_read_from_where_the_user_ran_and_recorded_absolute(tmp_path):
    from nettrain.records.checkpoint import load_checkpoint

    source = train(tmp_path, *FAST, name="source")
    run_dir = train(tmp_path, *FAST, "model.init_from=source", name="tuned")  # relative to tmp_path, the cwd
    assert load_checkpoint(run_dir)["config"]["model"]["init_from"] == str(source)
