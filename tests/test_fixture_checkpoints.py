"""Checkpoints an earlier nettrain wrote (tests/fixtures/checkpoints, made by scripts/make_fixture_checkpoints.py)
still evaluate, predict, export and resume: a user's trained models outlive the code that trained them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import metrics, run_in_process

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "digits_mlp", tmp_path / "digits_mlp"))


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "table_memory", tmp_path / "table_memory"))


def test_an_old_checkpoint_evaluates_to_the_val_metrics_it_recorded(digits):
    assert run_in_process("eval", str(digits), f"output={digits / 'eval'}") == 0
    result = json.loads((digits / "eval" / "metrics.json").read_text())
    assert result["accuracy"] == metrics(digits)["best"]["val_accuracy"]
    assert result["loss"] == pytest.approx(metrics(digits)["best"]["val_loss"], rel=1e-6)


def test_an_old_checkpoint_predicts_an_image(digits, tmp_path, capsys):
    from sklearn.datasets import load_digits

    seven = load_digits().images[7]  # a 7, as an 8x8 grayscale PNG of 0..255
    Image.fromarray((seven * 255 / 16).astype(np.uint8)).save(tmp_path / "seven.png")
    assert run_in_process("predict", str(digits), f"input={tmp_path / 'seven.png'}", "format=json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["prediction"] == "7"


def test_an_old_table_checkpoint_predicts_rows_and_keeps_its_memory(table, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,city\n1.5,0.0,rome\n-2.0,0.1,oslo\n")
    assert run_in_process("predict", str(table), f"input={rows}", "format=json") == 0
    predicted = [r["prediction"] for r in json.loads(capsys.readouterr().out)]
    assert predicted == ["high", "low"]
    assert run_in_process("eval", str(table), f"data.path={FIXTURES / 'table.csv'}", f"output={table / 'eval'}") == 0
    result = json.loads((table / "eval" / "metrics.json").read_text())
    assert result["accuracy"] == metrics(table)["best"]["val_accuracy"]


def test_an_old_checkpoint_exports_to_onnx(digits, tmp_path):
    assert run_in_process("export", str(digits), "format=onnx", f"output={tmp_path / 'm.onnx'}") == 0
    info = json.loads((tmp_path / "m.json").read_text())
    assert info["max_abs_diff"] <= info["tolerance"] and info["class_names"] == [str(i) for i in range(10)]


def test_an_old_run_resumes_for_more_epochs(digits):
    assert run_in_process("train", f"resume={digits}", "trainer.max_epochs=3") == 0
    record = metrics(digits)
    assert record["status"] == "completed" and [r["epoch"] for r in record["history"]] == [1, 2, 3]
