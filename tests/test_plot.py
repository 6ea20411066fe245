"""`nettrain plot RUN_DIR`, as the docs show it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import FAST, metrics, run_in_process, train
from nettrain.records.figures import curves_figure


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        return train(tmp, *FAST)


def test_plot_writes_a_png_of_the_run_curves(run_dir, tmp_path):
    assert run_in_process("plot", str(run_dir)) == 0
    image = Image.open(run_dir / "curves.png")
    assert image.format == "PNG" and image.width > image.height > 300

    assert run_in_process("plot", str(run_dir), f"output={tmp_path / 'report' / 'curves.png'}") == 0
    assert (tmp_path / "report" / "curves.png").is_file()


def test_the_figure_has_train_and_val_loss_and_accuracy_and_marks_the_best_epoch(run_dir):
    record = metrics(run_dir)
    best = record["best_epoch"]
    figure = curves_figure(record["history"], best, "run")
    loss, accuracy, lr = figure.axes
    assert [ax.get_title() for ax in figure.axes] == ["loss: train vs val", "accuracy: train vs val", "learning rate"]
    assert list(lr.lines[0].get_ydata()) == [r["lr"] for r in record["history"]] and lr.get_yscale() == "log"
    assert loss.get_yscale() == "linear"
    assert curves_figure(record["history"], best, "run", log_loss=True).axes[0].get_yscale() == "log"
    for ax, key in ((loss, "loss"), (accuracy, "accuracy")):
        train_line, val_line = ax.lines[:2]
        assert list(val_line.get_ydata()) == [r[f"val_{key}"] for r in record["history"]]
        assert list(train_line.get_ydata()) == [r[f"train_{key}"] for r in record["history"]]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[:2] == ["train", "val"] and labels[2].startswith(f"best epoch {best}: val ")
        assert any(list(line.get_xdata()) == [best, best] for line in ax.lines)  # the dashed marker line


def test_plot_of_a_regression_run_shows_rmse():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_rmse": 1 / e, "val_rmse": 1.1 / e,
                "train_mae": 0.8 / e, "val_mae": 0.9 / e} for e in (1, 2, 3)]
    figure = curves_figure(history, 3, "regression")
    assert [ax.get_title() for ax in figure.axes] == ["loss: train vs val", "rmse: train vs val"]


def test_the_title_is_the_runs_name_and_a_sweep_job_dir_works(tmp_path):
    from nettrain.records.figures import run_title

    sweep = tmp_path / "sweep"
    assert run_in_process("train", "-m", "optimizer.lr=0.01", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}") == 0
    (job,) = sweep.glob("0_*")
    assert "=" in job.name
    assert run_title(job) == f"mlp: {job.name}\noptimizer.lr=0.01 trainer.max_epochs=1"
    for args in ([str(job)], [f"run={job}"]):
        assert run_in_process("plot", *args, "log_loss=true") == 0
    assert (job / "curves.png").is_file()


def test_plot_bad_inputs_end_with_one_line_and_exit_2(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "metrics.json").write_text(json.dumps({"status": "running", "history": []}))
    cases = [
        ([str(tmp_path / "missing")], "no such run dir"),
        ([str(tmp_path / "empty")], "has no metrics.json"),
        ([str(tmp_path / "fresh")], "no finished epoch yet"),
        ([str(run_dir), "output=curves.jpg"], "must be a .png file"),
        ([], "missing run=..."),
        ([str(run_dir), "dpi=300"], "unknown argument dpi"),
    ]
    for args, message in cases:
        assert run_in_process("plot", *args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (args, err)
