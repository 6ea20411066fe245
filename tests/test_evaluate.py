"""`nettrain eval`, as the docs show it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import metrics, run_in_process, save_malicious_checkpoint, train
from nettrain.evaluation.scores import regression_metrics


@pytest.fixture(scope="module")
def run_dir(digits_run):
    return digits_run


def test_eval_of_best_checkpoint_reproduces_the_val_metrics_recorded_at_training(run_dir, capsys):
    assert run_in_process("eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}") == 0

    out = run_dir / "eval" / "val"
    result = json.loads((out / "metrics.json").read_text())
    recorded = metrics(run_dir)["best"]
    assert result["loss"] == pytest.approx(recorded["val_loss"], rel=1e-6)
    assert result["accuracy"] == recorded["val_accuracy"]
    assert result["samples"] == 360 and result["split"] == "val"
    assert list(result["per_class"]) == [str(i) for i in range(10)]
    assert set(result["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    assert sum(c["support"] for c in result["per_class"].values()) == 360
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 360
    assert cm.trace().item() / 360 == pytest.approx(result["accuracy"])
    assert cm.sum(1).tolist() == [c["support"] for c in result["per_class"].values()]  # rows: true class

    assert Image.open(out / "confusion_matrix.png").format == "PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out)).Reload()
    assert "eval_val/confusion_matrix" in events.Tags()["images"]
    stdout = capsys.readouterr().out
    assert "per class" in stdout and "confusion matrix" in stdout and f"{recorded['val_accuracy']:.2%}" in stdout


def test_eval_rebuilds_the_data_with_overrides_into_the_chosen_output_dir(run_dir, tmp_path):
    assert run_in_process("eval", f"ckpt={run_dir}", "data.val_fraction=0.5", f"output={tmp_path / 'half'}") == 0
    result = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert result["samples"] == 899  # half of the 1,797 digits, not the 360 of training's split


def test_regression_metrics():
    m = regression_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0]))
    assert m["rmse"] == pytest.approx((4 / 3) ** 0.5)
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / (((torch.tensor([1.0, 2, 5]) - 8 / 3) ** 2).sum().item()))




@pytest.mark.parametrize("args, message", [
    (["split=test"], "has no test split"),
    (["split=train"], "invalid split='train': allowed: val, test"),
    (["data.nope=1"], "unknown data.nope"),
    (["data.val_fraction=2"], "invalid data.val_fraction=2"),
    (["device=tpu"], "invalid device='tpu'"),
    (["bogus=1"], "unknown argument bogus"),
    (["output"], "expected key=value arguments, got 'output'"),
])
def test_eval_bad_arguments_end_with_one_line_and_exit_2(run_dir, capsys, args, message):
    assert run_in_process("eval", f"ckpt={run_dir}", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_eval_refuses_missing_and_malicious_checkpoints(tmp_path, capsys):
    assert run_in_process("eval") == 2
    assert "missing ckpt=" in capsys.readouterr().err
    assert run_in_process("eval", f"ckpt={tmp_path / 'nope.pt'}") == 2
    assert "no such checkpoint" in capsys.readouterr().err
    marker = tmp_path / "pwned"
    save_malicious_checkpoint(tmp_path / "evil.pt", marker)
    assert run_in_process("eval", f"ckpt={tmp_path / 'evil.pt'}") == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_help_of_the_after_training_commands_imports_no_torch():
    code = ("import sys\nfrom nettrain.cli import main\n"
            "for command in ('eval', 'predict', 'export', 'plot'):\n    assert main([command, '--help']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: nettrain eval [ckpt=]PATH" in proc.stdout and "usage: nettrain plot [run=]RUN_DIR" in proc.stdout


def test_eval_and_predict_of_a_regression_model_report_rmse_mae_r2_and_values(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=gen)
    y = 3 * x[:, 0] - 2 * x[:, 1] + 0.1 * torch.randn(300, generator=gen) + 0.05
    lines = ["a,b,y"] + [f"{a:.4f},{b:.4f},{t:.4f}" for (a, b), t in zip(x.tolist(), y.tolist())]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    run_dir = train(tmp_path, "data=csv", f"data.path={tmp_path / 'rows.csv'}", "data.target=y", "loss=mse",
                    "optimizer.lr=0.01", "trainer.max_epochs=10")

    assert run_in_process("eval", f"ckpt={run_dir}") == 0
    result = json.loads((run_dir / "eval" / "val" / "metrics.json").read_text())
    recorded = metrics(run_dir)["best"]
    assert result["rmse"] == pytest.approx(recorded["val_rmse"], rel=1e-5)
    assert result["mae"] == pytest.approx(recorded["val_mae"], rel=1e-5)
    assert result["r2"] > 0.9 and "per_class" not in result and "accuracy" not in result

    # Other rows would be standardized with their own statistics, not the model's: refused.
    (tmp_path / "other.csv").write_text("\n".join(lines[:150]) + "\n")
    capsys.readouterr()
    assert run_in_process("eval", f"ckpt={run_dir}", f"data.path={tmp_path / 'other.csv'}") == 2
    assert "preprocessing differs from the model's" in capsys.readouterr().err

    (tmp_path / "new.csv").write_text("a,b\n1,0\n")
    capsys.readouterr()
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={tmp_path / 'new.csv'}", "format=json") == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["input"].endswith("new.csv:2") and prediction["prediction"] == pytest.approx(3.05, abs=0.5)


def _image_folder(root, splits, classes=("cat", "dog"), per_class=6):
    """root/<split>/<class>/*.png: reddish 'cat' and bluish 'dog' pictures of mixed sizes and modes."""
    gen = torch.Generator().manual_seed(len(str(root)))
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                colour = [200, 40, 40] if c == 0 else [40, 40, 200]
                noise = torch.randint(0, 40, (20 + i, 24, 3), generator=gen)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                image = Image.fromarray(pixels, mode="RGB")
                (image.convert("L") if i % 3 == 0 else image).save(folder / f"{name}{i}.png")
    return root


def test_eval_on_an_image_folder_test_split_and_on_other_files_via_data_root(tmp_path, capsys, monkeypatch):
    photos = _image_folder(tmp_path / "photos", ("train", "val", "test"))
    run_dir = train(tmp_path, "data=imagefolder", f"data.root={photos}", "data.image_size=16", "data.num_workers=0",
                    "data.augment=none", "data.batch_size=4", "model=cnn", "model.channels=[8]", "trainer.max_epochs=2")
    assert run_in_process("eval", f"ckpt={run_dir}", "split=test") == 0
    result = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert result["split"] == "test" and result["samples"] == 12 and list(result["per_class"]) == ["cat", "dog"]

    more = _image_folder(tmp_path / "more", ("train", "val"), per_class=3)
    assert run_in_process("eval", f"ckpt={run_dir}", f"data.root={more}", f"output={tmp_path / 'more-eval'}") == 0
    assert json.loads((tmp_path / "more-eval" / "metrics.json").read_text())["samples"] == 6
    # By default a report on other data goes beside the run's own, named by it, and says what it measured.
    assert run_in_process("eval", f"ckpt={run_dir}", "split=test", f"data.root={tmp_path / 'photos'}") == 0  # its own
    monkeypatch.chdir(tmp_path)
    assert run_in_process("eval", f"ckpt={run_dir}", "data.root=more", "data.batch_size=2") == 0  # relative: from cwd
    (beside,) = [p.name for p in (run_dir / "eval").iterdir() if p.name.startswith("val-")]
    assert beside.startswith("val-more_2-") and sorted(p.name for p in (run_dir / "eval").iterdir()) == ["test", beside]
    report = json.loads((run_dir / "eval" / beside / "metrics.json").read_text())
    assert report["samples"] == 6 and report["data"] == {"root": str(more), "batch_size": 2}
    assert "data" not in json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())

    other = _image_folder(tmp_path / "other", ("train", "val"), classes=("bird", "fish"), per_class=2)
    capsys.readouterr()
    assert run_in_process("eval", f"ckpt={run_dir}", f"data.root={other}") == 2
    assert "the data does not match the model" in capsys.readouterr().err
