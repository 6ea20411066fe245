"""Imbalanced binary targets: the rare class's precision / recall / F1 every epoch, a decision threshold
tuned on val (or fixed, or argmax) stored in every checkpoint and used by eval, predict and export;
resumed and data-parallel runs decide exactly as one uninterrupted process."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from conftest import history, metrics, run_in_process, train
from nettrain.config.rules import monitor_mode
from nettrain.inference.decision import Decision, best_threshold, positive_index, precision_recall_f1, predict
from nettrain.records.console import epoch_line

# 480 train / 120 val rows, 30 steps an epoch: a model that finds the rule but, early on, too few failures.
RUN = ["data=csv", "data.target=state", "data.batch_size=16", "trainer.max_epochs=3"]
COMPARED = ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_threshold")


def table(path: Path, rows: int = 600, positives: float = 0.08, classes: int = 2) -> Path:
    """A learnable rule on 4 numeric columns; the rare class `failure` sorts first (index 0)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4))
    score = x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=rows)
    if classes == 2:
        state = np.where(score > np.quantile(score, 1 - positives), "failure", "ok")
    else:
        state = np.array(["a", "b", "c"])[np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))]
    pd.DataFrame({**{f"x{i}": x[:, i] for i in range(4)}, "state": state}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    return table(tmp_path_factory.mktemp("data") / "machines.csv")


def run_args(csv: Path, *extra: str) -> list[str]:
    return [*RUN, f"data.path={csv}", *extra]


# The reference run: the threshold tuned each epoch, best.pt chosen by the rare class's F1.
AUTO = ["early_stopping.monitor=val_f1", "checkpoint.save_top_k=2", "logger=[tensorboard,csv]"]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, csv) -> Path:
    return train(tmp_path_factory.mktemp("auto"), *run_args(csv, *AUTO))


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory, csv) -> Path:
    return train(tmp_path_factory.mktemp("fixed"), *run_args(csv, "threshold=0.3"))



def decision_of(path: Path) -> dict:
    return torch.load(path, weights_only=True)["decision"]


def test_every_epoch_records_the_rare_class_metrics_at_a_threshold_that_beats_argmax(tmp_path, csv, auto_run):
    argmax = history(train(tmp_path, *run_args(csv, *AUTO, "threshold=null")))
    tuned = history(auto_run)
    m = metrics(auto_run)
    assert m["decision"]["positive_class"] == "failure" and m["decision"]["positive_index"] == 0
    assert m["decision"]["train_counts"] == {"failure": 38, "ok": 442}
    for a, t in zip(argmax, tuned):
        assert {k: a[k] for k in ("train_loss", "val_loss")} == {k: t[k] for k in ("train_loss", "val_loss")}
        assert a["val_threshold"] == 0.5 and t["val_threshold"] != 0.5
        assert t["val_f1"] >= a["val_f1"]
        assert all(0 <= t[k] <= 1 for k in ("val_precision", "val_recall", "val_f1"))
    assert any(t["val_f1"] > a["val_f1"] + 0.05 for a, t in zip(argmax, tuned))
    # The loggers pick the new keys up: one CSV column and one TensorBoard curve each.
    header = (auto_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_precision", "val_recall", "val_f1", "val_threshold"} <= set(header)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(EventAccumulator(str(auto_run)).Reload().Scalars("f1/val")) == 3


def test_checkpoints_carry_their_epochs_threshold_and_eval_decides_with_it(auto_run, capsys):
    m, ckpts = metrics(auto_run), auto_run / "checkpoints"
    best = m["history"][m["best_epoch"] - 1]
    assert decision_of(ckpts / "best.pt")["threshold"] == best["val_threshold"]
    assert decision_of(ckpts / "last.pt")["threshold"] == m["history"][-1]["val_threshold"]
    for path in ckpts.glob("epoch=*.pt"):
        epoch = int(path.name[6:9])
        assert decision_of(path)["threshold"] == m["history"][epoch - 1]["val_threshold"]

    assert run_in_process("eval", str(auto_run), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threshold"] == best["val_threshold"] and result["positive_class"] == "failure"
    for key in ("accuracy", "precision", "recall", "f1"):
        assert result[key] == best[f"val_{key}"]
    (tp, fn), (fp, tn) = result["confusion_matrix"]
    assert result["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) and result["accuracy"] == (tp + tn) / 120

    # Independently of nettrain.inference.decision: scikit-learn on the model's outputs at the stored threshold.
    from nettrain.evaluation.checkpoint import evaluate_checkpoint

    e = evaluate_checkpoint(ckpts / "best.pt", device="cpu")
    chosen = (e.outputs.softmax(-1)[:, 0].double() >= best["val_threshold"]).numpy()
    actual = (e.targets == 0).numpy()
    assert f1_score(actual, chosen) == pytest.approx(best["val_f1"])
    assert precision_score(actual, chosen) == pytest.approx(best["val_precision"])
    assert recall_score(actual, chosen) == pytest.approx(best["val_recall"])


def test_early_stopping_and_checkpoints_follow_val_f1_upwards(auto_run):
    assert monitor_mode("val_f1") == monitor_mode("val_recall") == monitor_mode("val_precision") == "max"
    m = metrics(auto_run)
    f1 = [r["val_f1"] for r in m["history"]]
    assert len(set(f1)) > 1  # a min mode would pick another epoch
    assert m["best_epoch"] == f1.index(max(f1)) + 1 and m["best"]["val_f1"] == max(f1)
    kept = sorted(float(p.stem.split("val_f1=")[1]) for p in (auto_run / "checkpoints").glob("epoch=*.pt"))
    assert kept == pytest.approx(sorted(f1)[-2:], abs=1e-4)


def test_a_fixed_threshold_is_used_as_given_by_training_predict_and_export(fixed_run, csv):
    assert all(r["val_threshold"] == 0.3 for r in metrics(fixed_run)["history"])
    assert decision_of(fixed_run / "checkpoints" / "best.pt")["threshold"] == 0.3

    from nettrain.inference.predict import predict as predict_inputs

    results = predict_inputs(fixed_run, csv, device="cpu")
    assert results.threshold == 0.3
    chances = [(p.probabilities["failure"], p.prediction) for p in results.predictions]
    assert all((c == "failure") == (p >= 0.3) for p, c in chances)
    assert any(0.3 <= p < 0.5 for p, _ in chances)  # rows argmax would call "ok" are called "failure"

    from nettrain.export.formats import export_checkpoint

    _, info = export_checkpoint(fixed_run, "torchscript")
    assert info["decision"]["threshold"] == 0.3 and info["decision"]["positive_class"] == "failure"
    assert json.loads((fixed_run / "export" / "best.torchscript.json").read_text())["decision"] == info["decision"]


def test_thresholds_off_binary_classification_or_out_of_range_are_refused_in_one_line(tmp_path, capfd):
    three = table(tmp_path / "three.csv", rows=150, classes=3)
    for args, line in [
        ([f"data.path={three}", "threshold=2"], "invalid threshold=2: allowed: auto, null (argmax) or a number in (0, 1)"),
        ([f"data.path={three}", "threshold=0.3"],
         "invalid threshold=0.3: a threshold applies to binary classification only, this is a 3-class task"),
        ([f"data.path={three}", "early_stopping.monitor=val_f1"],
         "invalid early_stopping.monitor='val_f1': the rare class's f1 exists for binary classification only"),
    ]:
        assert run_in_process("train", *RUN, *args) == 2, args
        err = capfd.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"nettrain: {line}") and "Traceback" not in "\n".join(err)
    # Without a threshold, a 3-class run has no rare class: no binary metrics.
    record = metrics(train(tmp_path, *RUN, f"data.path={three}", "trainer.max_epochs=1"))
    assert record["decision"] is None and "val_f1" not in record["history"][0]


def test_a_balanced_binary_task_decides_by_argmax(tmp_path):
    run_dir = train(tmp_path, *RUN, f"data.path={table(tmp_path / 'even.csv', rows=300, positives=0.5)}",
                    "trainer.max_epochs=2")
    m = metrics(run_dir)
    assert m["decision"]["rule"] == "argmax"
    assert all(r["val_threshold"] == 0.5 and "val_f1" in r for r in m["history"])
    assert decision_of(run_dir / "checkpoints" / "best.pt")["threshold"] is None


def test_resume_after_an_interruption_replays_the_thresholds(tmp_path, csv, auto_run, monkeypatch):
    """Ctrl-C at step 40 (inside epoch 2), then resume: the history, thresholds included, and the weights
    are the uninterrupted run's."""
    from nettrain.training.guards import DivergenceGuard

    update = DivergenceGuard.update

    def interrupt_at_step_40(self, loss, step):
        if step == 40:
            signal.raise_signal(signal.SIGINT)
        return update(self, loss, step)

    monkeypatch.setattr(DivergenceGuard, "update", interrupt_at_step_40)
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", *run_args(csv, *AUTO)) == 130
    monkeypatch.undo()
    assert metrics(run_dir)["status"] == "interrupted" and metrics(run_dir)["epochs"] == 1
    assert decision_of(run_dir / "checkpoints" / "last.pt")["threshold"] == metrics(run_dir)["history"][0]["val_threshold"]

    assert run_in_process("train", f"resume={run_dir}") == 0
    assert history(run_dir) == history(auto_run)
    ours, theirs = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (run_dir, auto_run))
    assert ours["decision"] == theirs["decision"]
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])


def test_two_processes_tune_the_threshold_on_the_whole_val_split(tmp_path, csv):
    """Each rank validates half of val; the threshold and the metrics at it are those of one process
    (with the same global batch), not of a rank's half."""
    common = [*run_args(csv), "model.dropout=0", "trainer.max_epochs=2"]
    one = history(train(tmp_path, *common, "data.batch_size=32", name="one"))
    two = history(train(tmp_path, *common, "data.batch_size=16", "trainer.devices=2", name="two"))
    assert any(r["val_threshold"] != 0.5 for r in one)
    for a, b in zip(two, one):
        assert {k: a[k] for k in COMPARED} == pytest.approx({k: b[k] for k in COMPARED}, rel=1e-4, abs=1e-6)


# The threshold search and the metrics, as pure functions.

def test_the_tuned_threshold_separates_cleanly_and_never_splits_equal_scores():
    assert best_threshold(torch.tensor([0.9, 0.8, 0.3, 0.2]), torch.tensor([True, True, False, False])) == pytest.approx(0.55)
    # Three samples score 0.6, one of them positive: they are taken together or not at all.
    assert best_threshold(torch.tensor([0.6, 0.6, 0.6, 0.1]), torch.tensor([True, False, False, False])) == pytest.approx(0.35)
    # Every sample taken: the lowest score itself.
    assert best_threshold(torch.tensor([0.7, 0.7, 0.4]), torch.tensor([True, False, True])) == pytest.approx(0.4)
    # Equal F1 (2/3) taking 1 or 4 samples: the fewest positives predicted wins.
    assert best_threshold(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([True, False, False, True])) == pytest.approx(0.85)


def test_no_positive_in_val_or_none_predicted_gives_zeros_not_nan():
    assert best_threshold(torch.tensor([0.9, 0.1]), torch.tensor([False, False])) is None
    assert precision_recall_f1(torch.tensor([False, False]), torch.tensor([True, False])) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(torch.tensor([False, False]), torch.tensor([False, False])) == (0.0, 0.0, 0.0)
    rule = Decision(positive=1, class_names=["ok", "failure"], tune=True)
    logits = torch.tensor([[2.0, -1.0], [1.0, 0.0], [3.0, 0.5]])
    threshold, m = rule.measure(logits, torch.tensor([0, 0, 0]))  # an all-negative val split
    assert threshold is None and m["f1"] == 0.0 and m["accuracy"] == 1.0
    assert all(math.isfinite(v) for v in m.values())
    _, empty = rule.measure(None, None)  # a rank or split without samples
    assert all(math.isfinite(v) for v in empty.values())


def test_the_rare_class_and_the_decision_rule():
    assert positive_index([3, 7]) == 0 and positive_index([7, 3]) == 1 and positive_index([5, 5]) == 1
    logits = torch.tensor([[0.0, -1.0], [0.0, 0.5], [0.0, 3.0]])  # class 1 probability 0.27, 0.62, 0.95
    assert predict(logits, 1, None).tolist() == [0, 1, 1]
    assert predict(logits, 1, 0.25).tolist() == [1, 1, 1]
    assert predict(logits, 1, 0.9).tolist() == [0, 0, 1]
    assert predict(logits, 0, 0.3).tolist() == [0, 0, 1]  # class 0 probability 0.73, 0.38, 0.05


def test_the_binary_epoch_line_fits_80_columns():
    record = {"epoch": 100, "train_loss": 0.41234, "val_loss": 0.37777, "train_accuracy": 0.96, "val_accuracy": 0.97,
              "val_f1": 0.8123, "val_threshold": 0.2213, "lr": 1.234e-3, "seconds": 1234.5}
    line = epoch_line(record, 100, improved=True)
    assert "val f1 0.812 @0.22" in line and len(line) <= 80
