"""Loggers as a config group: `logger=[tensorboard,csv,mlflow,wandb]`, each matching metrics.json."""

from __future__ import annotations

import csv
import sys

import pytest

from conftest import metrics, run_in_process, train

TWO_EPOCHS = ["trainer.max_epochs=2", "trainer.log_every_n_steps=5"]


def test_csv_and_mlflow_match_metrics_json_epoch_by_epoch(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = train(tmp_path, *TWO_EPOCHS, "logger=[tensorboard,csv,mlflow]", "logger.mlflow.tracking_uri=store")
    record = metrics(run_dir)
    history = record["history"]

    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == sorted(history[0])  # Lightning's CSVLogger: a header of the sorted metric names
    assert [{k: float(v) for k, v in row.items()} for row in rows] == [
        {k: pytest.approx(float(v)) for k, v in r.items()} for r in history]

    client = MlflowClient(tracking_uri=(tmp_path / "store").as_uri())  # relative to where nettrain ran
    run = client.get_run(record["loggers"]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["optimizer.lr"] == "0.001" and run.data.params["model.name"] == "mlp"
    for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
            (r["epoch"], pytest.approx(r[key])) for r in history]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "curves.png", "confusion_matrix.png"} <= artifacts


def test_a_resumed_run_continues_its_mlflow_run_and_its_csv(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = train(tmp_path, "trainer.max_epochs=1", "logger=[csv,mlflow]", "logger.mlflow.tracking_uri=store")
    run_id = metrics(run_dir)["loggers"]["mlflow_run_id"]
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 0
    record = metrics(run_dir)
    assert record["loggers"]["mlflow_run_id"] == run_id
    client = MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2]
    with open(run_dir / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]


def test_wandb_offline_writes_a_run_to_sync_later(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = train(tmp_path, "trainer.max_epochs=1", "logger=[wandb]", "logger.wandb.mode=offline")
    record = metrics(run_dir)
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{record['loggers']['wandb_run_id']}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert not list(run_dir.glob("events.out.tfevents.*"))  # only the loggers chosen


@pytest.mark.parametrize("name, package", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_logger_package_says_what_to_install(name, package, tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    assert run_in_process("train", f"hydra.run.dir={tmp_path / 'run'}", f"logger={name}") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == f"nettrain: logger={name} needs {package}, which is not installed: pip install 'nettrain[{name}]'"
    assert not (tmp_path / "run").exists()


def test_an_unknown_logger_lists_the_choices(capfd):
    assert run_in_process("train", "logger=[csv,neptune]") == 2
    assert "unknown logger=neptune; allowed: csv, mlflow, tensorboard, wandb" in capfd.readouterr().err


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir)).Reload()


def _session_status(run_dir) -> str:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_end_info":
                    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    return Status.Name(data.session_end_info.status)
    raise AssertionError("no session end")


def _hparams(run_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    return set(HParamsPluginData.FromString(value.metadata.plugin_data.content).session_start_info.hparams)
    raise AssertionError("no session start")


def test_tensorboard_hparams_are_the_user_choices_and_the_status_is_true(tmp_path):
    run_dir = train(tmp_path, "trainer.max_epochs=1", "optimizer.lr=0.002", "model=cnn")
    assert _hparams(run_dir) == {"model", "data", "loss", "optimizer", "scheduler", "trainer", "logger",
                                 "optimizer.lr", "trainer.max_epochs"}  # choices and overrides, no defaults
    assert _session_status(run_dir) == "STATUS_SUCCESS"
    assert "confusion_matrix/val" in _events(run_dir).Tags()["images"]

    diverged = tmp_path / "diverged"
    assert run_in_process("train", f"hydra.run.dir={diverged}", "optimizer.lr=10") == 1
    assert _session_status(diverged) == "STATUS_FAILURE"


def test_the_regression_layout_shows_rmse(tmp_path):
    from nettrain.records.loggers import tb_layout

    charts = tb_layout("regression")["curves"]
    assert charts["rmse (train vs val)"] == ["Multiline", ["rmse/train", "rmse/val"]]
    assert "accuracy (train vs val)" not in charts
