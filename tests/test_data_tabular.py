"""`data=csv`: categorical and numeric columns, missing values, classification and regression,
the encoding predict reuses, and every bad input as a one-line error."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import metrics, run_in_process, train
from datagen import machines_csv
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.data.tabular import encode_rows
from nettrain.errors import UserError
from nettrain.records.checkpoint import load_checkpoint

CONFIG = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs", "data", "csv.yaml"))


def data_cfg(path, **overrides):
    return OmegaConf.merge(CONFIG, {"path": str(path), "target": "failure", "drop": ["id", "wear"],
                                    "categorical": ["model"], **overrides})


def test_categorical_one_hot_numeric_standardized_missing_filled(tmp_path):
    data = build_data(data_cfg(machines_csv(tmp_path / "m.csv")), DataContext(seed=0))
    pre = data.spec.preprocessing
    assert pre["kind"] == "tabular" and pre["features"] == ["temp", "rpm", "model"]
    assert pre["categories"]["model"] == ["<missing>", "A", "B", "C"]
    assert data.spec.input_shape == [2 + 4] and data.spec.class_names == ["0", "1"]
    x = data.train.x
    assert torch.isfinite(x).all()
    assert x[:, :2].mean(0).abs().max() < 1e-5 and (x[:, :2].std(0, unbiased=False) - 1).abs().max() < 0.05
    assert torch.equal(x[:, 2:].sum(1), torch.ones(len(x)))  # exactly one category per row


def test_encode_rows_gives_predict_exactly_the_training_inputs(tmp_path):
    path = machines_csv(tmp_path / "m.csv")
    data = build_data(data_cfg(path, val_fraction=0.5), DataContext(seed=0))
    every_row = encode_rows(path, data.spec.preprocessing)
    train_rows = {tuple(r) for r in data.train.x.tolist()}
    assert len(every_row) == 300 and sum(tuple(r) in train_rows for r in every_row.tolist()) == 150
    new = pd.DataFrame({"temp": [np.nan], "rpm": [1500.0], "model": ["Z"]})  # unseen category, missing number
    row = encode_rows(new, data.spec.preprocessing)[0]
    assert row[0] == 0 and row[2:].sum() == 0


def test_balanced_class_weights_favour_the_rare_class(tmp_path):
    data = build_data(data_cfg(machines_csv(tmp_path / "m.csv"), class_weights="balanced"), DataContext())
    counts = torch.bincount(data.train.y)
    assert data.class_weights[1] > 1 > data.class_weights[0]
    assert data.class_weights[1] / data.class_weights[0] == pytest.approx((counts[0] / counts[1]).item())


def test_classification_trains_end_to_end_with_balanced_weights(tmp_path):
    path = machines_csv(tmp_path / "m.csv")
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=failure", "data.drop=[id,wear]",
                    "data.categorical=[model]", "data.class_weights=balanced", "trainer.max_epochs=3")
    assert metrics(run_dir)["status"] == "completed"
    assert load_checkpoint(run_dir)["spec"]["preprocessing"]["categories"]["model"][0] == "<missing>"


def test_regression_reports_rmse_and_mae(tmp_path):
    path = machines_csv(tmp_path / "m.csv")
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=wear", "data.drop=[id,failure]",
                    "data.categorical=[model]", "loss=mse", "optimizer.lr=0.01", "trainer.max_epochs=6")
    m = metrics(run_dir)
    assert {"val_rmse", "val_mae"} <= set(m["best"])
    assert m["best"]["val_rmse"] < 2.5 and m["best"]["val_mae"] < 2.5  # wear is about 6.6 +- 1: it learned
    spec = load_checkpoint(run_dir)["spec"]
    assert spec["task"] == "regression" and spec["num_classes"] == 1 and spec["class_names"] == []


def test_a_float_target_left_at_the_default_loss_trains_with_mse_and_says_so(tmp_path, caplog):
    path = machines_csv(tmp_path / "m.csv")
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=wear", "data.categorical=[model]",
                    "trainer.max_epochs=1")
    assert "val_rmse" in metrics(run_dir)["history"][0]
    assert "a numeric target (regression): training with loss=mse" in (run_dir / "train.log").read_text()


def test_a_float_target_with_a_classification_loss_is_a_clear_error(tmp_path, capsys):
    path = machines_csv(tmp_path / "m.csv")
    code = run_in_process("train", "data=csv", f"data.path={path}", "data.target=wear", "data.categorical=[model]",
                          "loss=bce", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and "regression targets need loss=mse" in capsys.readouterr().err


def bad_input(tmp_path, capsys, *overrides: str) -> str:
    code = run_in_process("train", "data=csv", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nettrain:")]
    assert code == 2 and len(err) == 1 and not (tmp_path / "run").exists()
    return err[0]


def test_bad_csv_inputs_are_one_line_errors(tmp_path, capsys):
    path = machines_csv(tmp_path / "m.csv")
    assert "invalid data.target='broken': no such column" in bad_input(
        tmp_path, capsys, f"data.path={path}", "data.target=broken")
    line = bad_input(tmp_path, capsys, f"data.path={path}", "data.target=failure")
    assert "column 'model'" in line and "is not numeric" in line and "data.categorical=[model]" in line
    assert "invalid data.drop='nope'" in bad_input(tmp_path, capsys, f"data.path={path}", "data.target=failure",
                                                   "data.drop=[nope]")
    (tmp_path / "empty.csv").write_text("")
    assert "is empty" in bad_input(tmp_path, capsys, f"data.path={tmp_path / 'empty.csv'}", "data.target=x")
    (tmp_path / "header.csv").write_text("a,b\n")
    assert "no rows" in bad_input(tmp_path, capsys, f"data.path={tmp_path / 'header.csv'}", "data.target=b")
    assert "missing data.path" in bad_input(tmp_path, capsys, "data.target=b")
    assert "invalid data.task='guess'" in bad_input(tmp_path, capsys, f"data.path={path}", "data.target=failure",
                                                    "data.task=guess")
    (tmp_path / "inf.csv").write_text("a,b\ninf,1\n" + "1,0\n2,1\n" * 4)
    assert "column 'a' of " in (line := bad_input(tmp_path, capsys, f"data.path={tmp_path / 'inf.csv'}", "data.target=b"))
    assert "holds inf on line 2: values must be finite" in line


def test_predict_input_missing_a_feature_is_an_error(tmp_path):
    data = build_data(data_cfg(machines_csv(tmp_path / "m.csv")), DataContext())
    with pytest.raises(UserError, match="no column 'rpm'"):
        encode_rows(pd.DataFrame({"temp": [1.0], "model": ["A"]}), data.spec.preprocessing)


def test_a_column_named_twice_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "dup.csv").write_text("a,a,c,y\n" + "1,2,3,0\n4,5,6,1\n" * 10)
    line = bad_input(tmp_path, capsys, f"data.path={tmp_path / 'dup.csv'}", "data.target=y")
    assert line == f"nettrain: {tmp_path / 'dup.csv'}: column 'a' is named twice in the header (columns 1 and 2); rename one of them"
    assert run_in_process("check-data", "data=csv", f"data.path={tmp_path / 'dup.csv'}", "data.target=y") == 2
    assert "column 'a' is named twice" in capsys.readouterr().err


def test_one_word_in_a_column_of_numbers_is_named_by_its_cell_not_taken_for_an_id(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [f"{'hello' if i == 5 else round(rng.normal(), 3)},{rng.normal():.3f},{i % 2}" for i in range(60)]
    (tmp_path / "t.csv").write_text("a,b,y\n" + "\n".join(rows) + "\n")
    line = bad_input(tmp_path, capsys, f"data.path={tmp_path / 't.csv'}", "data.target=y")
    assert "column 'a'" in line and "'hello' on line 7" in line and "row id" not in line
