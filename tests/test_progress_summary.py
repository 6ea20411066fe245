"""What a run shows: the live progress bar, the start-up summary (also in metrics.json), 80 columns."""

from __future__ import annotations

import io

import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import Progress, TextColumn

from conftest import FAST, metrics, train
from nettrain.data.spec import DataSpec
from nettrain.evaluation.metrics import RunningTotals
from nettrain.models.build import build_model
from nettrain.records.console import StepBar, epoch_line, final_summary, labelled, layers_table, startup_lines
from nettrain.training.summary import model_summary


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def terminal(width: int = 80) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def test_the_bar_refreshes_on_time_not_on_steps_and_reads_the_loss_only_then():
    clock, reads = FakeClock(), []

    def loss() -> float:
        reads.append(clock.now)
        return 0.5

    progress = Progress(TextColumn("{task.fields[loss]}"), console=terminal(), auto_refresh=False)
    bar = StepBar(progress, "epoch 1/1", 1000, samples_per_step=32, loss=loss, clock=clock, every=0.25)
    task = progress.tasks[0]
    for _ in range(100):  # 100 steps of 10 ms: a refresh every 25 steps, whatever log_every_n_steps is
        clock.now += 0.01
        bar.advance()
    assert len(reads) == 4 and reads[0] == pytest.approx(0.25)
    assert task.completed == 100 and task.fields["loss"] == "loss 0.5000"
    assert task.fields["rate"] == "3,200/s"  # 100 steps x 32 samples in 1 s
    for _ in range(3):  # slow steps (2 s each): every step is a refresh
        clock.now += 2.0
        bar.advance()
    assert len(reads) == 7 and task.completed == 103


def test_the_bar_shows_the_running_mean_loss_of_the_epoch():
    totals = RunningTotals(torch.device("cpu"), "classification")
    outputs, targets = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    for value in (1.0, 2.0, 3.0):
        totals.add(outputs, targets, torch.tensor(value))
    assert totals.mean_loss() == pytest.approx(2.0)
    # The totals are one tensor [loss sum, correct, samples] on the device, read only at refresh time.
    totals.values = torch.tensor([8.0, 1.0, 4.0])
    assert totals.mean_loss() == pytest.approx(2.0)


def test_a_disabled_bar_costs_a_counter_only():
    progress = Progress(console=Console(file=io.StringIO()), disable=True)
    bar = StepBar(progress, "x", 10, loss=lambda: pytest.fail("the loss must not be read"), every=0.0)
    for _ in range(10):
        bar.advance()
    assert bar.done == 10


def test_epoch_lines_fit_80_columns():
    classification = {"epoch": 100, "train_loss": 12.3456, "val_loss": 11.2345, "train_accuracy": 0.999,
                      "val_accuracy": 1.0, "lr": 1.234e-3, "seconds": 1234.5}
    regression = {"epoch": 100, "train_loss": 12345.678, "val_loss": 12345.678, "train_rmse": 111.11,
                  "val_rmse": 111.11, "train_mae": 80.0, "val_mae": 80.0, "lr": 1e-3, "seconds": 1234.5}
    for record in (classification, regression):
        line = epoch_line(record, 100, improved=True)
        assert len(line) <= 80 and line.endswith(" *"), line
    assert "acc 99.9% val 100.0%" in epoch_line(classification, 100, False)
    assert "rmse 111.1 val 111.1" in epoch_line(regression, 100, False)


def test_long_paths_go_on_a_line_of_their_own_at_80_columns(tmp_path):
    out = terminal()
    long = tmp_path / ("very-long-directory-name-" * 3) / "2026-01-01" / "12-00-00-123456_mlp"
    labelled("run dir", str(long), out=out)
    labelled("short", "fits", out=out)
    lines = out.file.getvalue().splitlines()
    assert lines == ["run dir", f"  {long}", "short    fits"]

    out = terminal()
    record = {"epochs": 3, "total_seconds": 4.2, "best": {"val_loss": 0.1, "val_accuracy": 0.9}}
    final_summary({"status": "completed", "best_epoch": 3}, record, long, out=out)
    text = out.file.getvalue()
    assert str(long / "checkpoints" / "best.pt") in text.splitlines()[3]  # whole, never broken mid-path
    assert "completed after 3 epoch(s) in 4.2s" in text


def test_model_summary_lists_parameters_and_feature_map_sizes_of_a_convnet():
    spec = DataSpec(input_shape=[3, 32, 32], num_classes=5, class_names=list("abcde"))
    cfg = OmegaConf.create({"name": "cnn", "channels": [8, 16], "kernel_size": 3, "pool": "max", "dropout": 0.0})
    model = build_model(cfg, spec)
    for p in model.backbone.parameters():
        p.requires_grad = False
    summary = model_summary(model, spec.input_shape, torch.device("cpu"))
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["trainable"] == 16 * 5 + 5 and summary["outputs"] == 5 and summary["input_shape"] == [3, 32, 32]
    shapes = [(layer["type"], layer["output_shape"]) for layer in summary["layers"]]
    assert ("Conv2d", [8, 32, 32]) in shapes and ("MaxPool2d", [8, 16, 16]) in shapes
    assert ("MaxPool2d", [16, 8, 8]) in shapes and shapes[-1] == ("Linear", [5])
    assert not any(t in ("ReLU", "Dropout") for t, _ in shapes)  # nothing to show: left out
    assert model.training  # the summary's eval-mode pass leaves the model as it found it

    out = terminal()
    out.print(layers_table({"name": "cnn", **summary}))
    assert max(map(len, out.file.getvalue().splitlines())) <= 80


def test_the_start_up_summary_is_shown_and_recorded_in_metrics_json(tmp_path, capfd):
    run_dir = train(tmp_path, *FAST)
    err = capfd.readouterr().err
    run = metrics(run_dir)["run"]
    assert run["device"] == "cpu" and run["device_name"] and run["precision"] == "32" and run["threads"] >= 1
    assert run["data"] == {"name": "digits", "task": "classification", "classes": 10, "input_shape": [1, 8, 8],
                           "samples": {"train": 1437, "val": 360}}
    assert run["model"]["parameters"] == run["model"]["trainable"] == 64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert run["optimizer"]["name"] == "adam" and run["scheduler"] == "none"
    assert run["epochs"] == 2 and run["steps"] == 2 * run["steps_per_epoch"] == 44
    assert run["started"][:2] == "20" and metrics(run_dir)["total_seconds"] > 0
    before_training = err.split("epoch 1/2")[0]
    for fact in ("device   cpu", "precision 32", "digits: 1,437 train, 360 val; 10 classes; input 1x8x8",
                 "mlp: 50,826 parameters (50,826 trainable), 10 outputs", "2 epochs x 22 steps = 44 steps"):
        assert fact in before_training, fact
    lines = startup_lines(run, run_dir)
    assert all(len(line) <= 80 for line in lines[1:]), lines
    assert (run_dir / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_the_bar_fits_80_columns():
    from nettrain.records.console import make_progress

    out = terminal()
    clock = FakeClock()
    with make_progress(out=out) as progress:
        bar = StepBar(progress, "epoch 100/100", 123_456, samples_per_step=256, loss=lambda: 12.3456, clock=clock)
        for _ in range(1000):
            clock.now += 0.01
            bar.advance()
        progress.refresh()
        rendered = out.export_text() if out.record else out.file.getvalue()
    lines = [line.replace("\x1b[2K", "").rstrip() for line in rendered.replace("\r", "\n").splitlines()
             if "epoch 100/100" in line]
    assert lines and all(len(line) <= 80 for line in lines), lines
    for field in ("/123456", "loss 12.3456", "25,600/s", "eta 0:"):  # nothing cut to fit
        assert field in lines[-1], lines[-1]
