"""What sinks real tables, on generated look-alikes: row-id columns, columns that give the target away,
val rows copied from training rows; reported by check-data, warned about by training, and nothing said
on honest tables. Also the loss=mse warning for a numeric target read as classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import run_in_process, train
from datagen import image_folder

TARGET = "Machine failure"


def ai4i_csv(path, rows=3000, seed=0):
    """Like the AI4I 2020 predictive-maintenance table: a sequential UDI, a product code unique per row,
    a Type L/M/H, five measurements, a rare failure target and the failure-mode flags that explain it
    (TWF, HDF, PWF, OSF imply a failure; RNF mostly does not)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["L", "M", "H"], rows, p=[0.5, 0.3, 0.2])
    air = np.round(rng.normal(300, 2, rows), 1)
    process = np.round(air + 10 + rng.normal(0, 1, rows), 1)
    rpm = np.round(rng.normal(1540, 180, rows)).astype(int)
    torque = np.round(np.clip(rng.normal(40, 9, rows), 3, 77), 1)
    wear = rng.integers(0, 254, rows)
    power = torque * rpm * 2 * np.pi / 60
    flags = {"TWF": (wear >= 200) & (wear <= 240) & (rng.random(rows) < 0.1),
             "HDF": (process - air < 8.6) & (rpm < 1380),
             "PWF": (power < 3000) | (power > 10000),
             "OSF": wear * torque > np.select([kind == "L", kind == "M"], [11000, 12000], 13000)}
    failure = np.logical_or.reduce(list(flags.values())).astype(int)
    failure[rng.choice(np.flatnonzero(failure == 0), 3, replace=False)] = 1  # failures no flag explains
    table = pd.DataFrame({
        "UDI": np.arange(1, rows + 1),
        "Product ID": [f"{k}{n}" for k, n in zip(kind, rng.permutation(900000)[:rows] + 100000)],
        "Type": kind, "Air temperature [K]": air, "Process temperature [K]": process,
        "Rotational speed [rpm]": rpm, "Torque [Nm]": torque, "Tool wear [min]": wear, TARGET: failure,
        **{name: flag.astype(int) for name, flag in flags.items()},
        "RNF": (rng.random(rows) < 0.004).astype(int)})
    table.to_csv(path, index=False)
    return path, table


def wine_csv(path, rows=600, copies=150, seed=0):
    """Like the wine-quality tables: 11 float measurements, an integer quality 3..8, and some rows
    repeated (the split puts some copies in train and others in val)."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(np.round(rng.normal(size=(rows, 11)) * [1, .1, .1, 5, .01, 10, 40, .003, .15, .1, 1]
                              + [7, .3, .3, 6, .05, 35, 138, .994, 3.2, .5, 10.5], 3),
                     columns=["fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides",
                              "free sulfur dioxide", "total sulfur dioxide", "density", "pH", "sulphates", "alcohol"])
    x["quality"] = np.clip(np.round(6 + (x["alcohol"] - 10.5) * 0.8 + rng.normal(0, 0.7, rows)), 3, 8).astype(int)
    if copies:
        x = pd.concat([x, x.iloc[rng.choice(rows, copies, replace=False)]], ignore_index=True)
    x.to_csv(path, index=False)
    return path, x


def logged_warnings(run_dir):
    """The WARNING lines of the run's train.log, without their time stamp."""
    return [line.split("[WARNING] ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()
            if "[WARNING] " in line]


def check(capsys, *args):
    code = run_in_process("check-data", *args)
    out = capsys.readouterr()
    return code, out.out, out.err


def problem_lines(out):
    return [line for line in out.splitlines() if line.startswith("problem:")]


# check-data ------------------------------------------------------------------------------------------

def test_ai4i_like_table_ids_and_failure_flags_are_named_with_the_fix(tmp_path, capsys):
    path, table = ai4i_csv(tmp_path / "ai4i.csv")
    code, out, _ = check(capsys, "data=csv", f"data.path={path}", f"data.target={TARGET}", "data.categorical=[Type]")
    assert code == 0
    assert "problem: column 'UDI' looks like a row id (3000 distinct values in 3000 rows): leave it out with " \
           "data.drop=[UDI]" in out
    assert "problem: column 'Product ID' looks like a row id (3000 distinct values in 3000 rows): leave it out " \
           "with data.drop=[Product ID]" in out
    assert "data.categorical=[Product ID]" not in out  # a product code is no category
    together = float((table[["TWF", "HDF", "PWF", "OSF"]].any(axis=1) == table[TARGET]).mean())
    assert f"problem: columns TWF, HDF, PWF, OSF give the target away (together they match the target on " \
           f"{together:.1%} of rows): leave them out with data.drop=[TWF,HDF,PWF,OSF]" in out
    assert f"each of the {table.TWF.sum()} rows with TWF=1 is 'Machine failure'=1" in out
    assert "RNF" not in out.split("columns TWF")[1]  # RNF=1 is mostly no failure: not a leak
    for honest in ("Type", "Torque [Nm]", "Rotational speed [rpm]", "Tool wear [min]"):
        assert all(honest not in line for line in problem_lines(out)), honest
    assert "every column named above left out: data.drop=[UDI,Product ID,TWF,HDF,PWF,OSF]" in out
    assert out.strip().endswith("3 problem(s) (above)") and "problems:" not in out  # each problem printed once

    # the fix, applied: nothing left to say; and a hint keeps what data.drop already holds
    code, out, _ = check(capsys, "data=csv", f"data.path={path}", f"data.target={TARGET}", "data.categorical=[Type]",
                         "data.drop=[UDI,Product ID,TWF,HDF,PWF,OSF,RNF]", "strict=true")
    assert code == 0 and problem_lines(out) == [] and "no problems found" in out
    code, out, _ = check(capsys, "data=csv", f"data.path={path}", f"data.target={TARGET}", "data.categorical=[Type]",
                         "data.drop=[UDI,Product ID,RNF]")
    assert "leave them out with data.drop=[UDI,Product ID,RNF,TWF,HDF,PWF,OSF]" in out


def test_leakage_exits_1_under_strict(tmp_path, capsys):
    path, _ = ai4i_csv(tmp_path / "ai4i.csv", rows=1500)
    code, out, err = check(capsys, "data=csv", f"data.path={path}", f"data.target={TARGET}", "data.categorical=[Type]",
                           "data.drop=[UDI,Product ID]", "strict=true")
    assert code == 1 and "give the target away" in err and len(problem_lines(out)) == 1


def test_a_single_column_mapping_to_the_target_is_a_leak_but_an_all_zero_one_is_not(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = (rng.random(1000) < 0.3).astype(int)
    status = np.where(y == 1, "closed", "open")
    status[:5] = np.where(y[:5] == 1, "open", "closed")  # 99.5% agreement
    pd.DataFrame({"x": rng.normal(size=1000).round(6), "status": status, "zeros": 0,
                  "y": y}).to_csv(tmp_path / "t.csv", index=False)
    code, out, _ = check(capsys, "data=csv", f"data.path={tmp_path / 't.csv'}", "data.target=y",
                         "data.categorical=[status]")
    assert f"problem: column 'status' gives the target away (its 2 values map to 'y' on 99.5% of rows (the " \
           f"majority class alone: {1 - y.mean():.1%})): leave it out with data.drop=[status]" in out
    assert len(problem_lines(out)) == 1  # zeros "agree" 70% (the baseline), x is noise


def test_a_score_column_that_thresholds_a_binary_target_is_a_leak(tmp_path, capsys):
    rng = np.random.default_rng(2)
    y = (rng.random(2000) < 0.1).astype(int)
    score = np.where(y == 1, rng.uniform(0.6, 1, 2000), rng.uniform(0, 0.5, 2000)).round(4)
    pd.DataFrame({"temp": rng.normal(60, 5, 2000).round(2), "risk_score": score, "y": y}).to_csv(tmp_path / "t.csv",
                                                                                                 index=False)
    _, out, _ = check(capsys, "data=csv", f"data.path={tmp_path / 't.csv'}", "data.target=y")
    assert [line.split(" (")[0] for line in problem_lines(out)] == ["problem: column 'risk_score' gives the target away"]
    assert "risk_score above / below" in out and "matches 'y' on 100.0% of rows" in out


def test_regression_target_copied_into_a_feature_is_a_leak(tmp_path, capsys):
    rng = np.random.default_rng(3)
    temp = rng.normal(60, 10, 500).round(3)
    wear = (0.05 * temp + rng.normal(0, 0.3, 500)).round(4)
    pd.DataFrame({"temp": temp, "wear_mm": wear * 10 + 2, "wear": wear}).to_csv(tmp_path / "r.csv", index=False)
    code, out, _ = check(capsys, "data=csv", f"data.path={tmp_path / 'r.csv'}", "data.target=wear", "strict=true")
    assert code == 1
    assert problem_lines(out) == ["problem: column 'wear_mm' is a copy of the target 'wear' (correlation 1.0000): "
                                  "leave it out with data.drop=[wear_mm]"]


def copies_in_val(table, seed=42):
    """Val rows (of the split training makes) whose features equal a training row's, counted here."""
    from nettrain.data.labels import split_indices
    from nettrain.data.tabular import _classes

    train_idx, val_idx = split_indices(_classes(table["quality"])[1], 0.2, seed)
    features = list(table.columns[:-1])
    seen = set(map(tuple, table.iloc[train_idx][features].to_numpy().tolist()))
    return sum(tuple(r) in seen for r in table.iloc[val_idx][features].to_numpy().tolist()), len(val_idx)


def test_val_rows_copied_from_training_rows_are_counted_and_fail_strict(tmp_path, capsys):
    path, table = wine_csv(tmp_path / "wine.csv")
    copied, val = copies_in_val(table)
    assert copied > 10
    code, out, err = check(capsys, "data=csv", f"data.path={path}", "data.target=quality", "trainer.seed=42",
                           "strict=true")
    assert code == 1 and "no problems found" not in out
    assert problem_lines(out) == [f"problem: {copied} of {val} val rows have an exact copy in the training "
                                  f"rows (same features: {copied} with the same target, 0 with another): val scores "
                                  f"count them as unseen; remove repeated rows from the CSV (pandas: drop_duplicates)"]
    assert "val rows have an exact copy" in err


def test_copies_with_another_target_are_counted_apart():
    from omegaconf import OmegaConf

    from nettrain.data.table_checks import val_copies

    table = pd.DataFrame({"a": [1.0, 2.0, 3.0, 1.0, 2.0, 4.0, np.nan, np.nan], "b": ["x", "y", "z", "x", "y", "z", "w", "w"],
                          "t": [0, 1, 0, 0, 0, 1, 1, 1]})
    found = val_copies(table, OmegaConf.create({"target": "t"}), ["a", "b"], [0, 1, 2, 6], [3, 4, 5, 7])
    assert found.kind == "duplicates" and found.message.startswith(
        "3 of 4 val rows have an exact copy in the training rows (same features: 2 with the same target, 1 with another)")


@pytest.mark.parametrize("case", ["wine", "floats"])
def test_honest_tables_have_no_problem(tmp_path, capsys, case):
    if case == "wine":  # 11 float measurements, alcohol strongly predictive: no id, no leak
        path, _ = wine_csv(tmp_path / "wine.csv", copies=0)
        args = ["data.target=quality", "data.class_weights=balanced"]
    else:  # every value distinct, one feature predicts the target well (about 90%), not 99%
        rng = np.random.default_rng(4)
        x = rng.normal(size=(2000, 4)).round(6)
        y = (x[:, 0] + rng.normal(0, 0.35, 2000) > 0.8).astype(int)
        path = tmp_path / "floats.csv"
        pd.DataFrame({"sensor_a": x[:, 0], "sensor_b": x[:, 1], "temp": 60 + x[:, 2], "load": x[:, 3],
                      "y": y}).to_csv(path, index=False)
        args = ["data.target=y"]
    code, out, _ = check(capsys, "data=csv", f"data.path={path}", *args, "strict=true")
    assert code == 0 and problem_lines(out) == [] and out.strip().endswith("no problems found")
    if case == "wine":  # already balanced: no hint to set it
        assert "imbalance" in out and "consider data.class_weights" not in out


# training: one warning line each, and it trains -------------------------------------------------------

def test_training_warns_once_per_finding_and_trains_the_same(tmp_path):
    path, _ = ai4i_csv(tmp_path / "ai4i.csv", rows=1500)
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", f"data.target={TARGET}",
                    "data.categorical=[Type,Product ID]", "trainer.max_epochs=1")
    warnings = [w for w in logged_warnings(run_dir) if w.startswith(f"{path}: ")]
    assert len(warnings) == 3, warnings
    assert warnings[0] == f"{path}: column 'UDI' looks like a row id (1500 distinct values in 1500 rows): leave it " \
                          f"out with data.drop=[UDI]"
    assert warnings[1].startswith(f"{path}: column 'Product ID' looks like a row id")
    assert "columns TWF, HDF, PWF, OSF give the target away" in warnings[2] and "data.drop=[TWF,HDF,PWF,OSF]" in warnings[2]


def test_training_on_a_text_id_column_says_it_is_an_id_not_to_declare_it_categorical(tmp_path, capsys):
    path, _ = ai4i_csv(tmp_path / "ai4i.csv", rows=300)
    code = run_in_process("train", "data=csv", f"data.path={path}", f"data.target={TARGET}", "data.categorical=[Type]",
                          f"hydra.run.dir={tmp_path / 'run'}")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nettrain:")]
    assert code == 2 and len(err) == 1 and not (tmp_path / "run").exists()
    assert "column 'Product ID' looks like a row id" in err[0] and "data.categorical" not in err[0]


def test_val_copies_warn_in_training(tmp_path):
    path, table = wine_csv(tmp_path / "wine.csv", rows=300, copies=100)
    copied, val = copies_in_val(table)
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=quality", "trainer.seed=42",
                    "trainer.max_epochs=1")
    assert [w for w in logged_warnings(run_dir) if "exact copy" in w] == [
        f"{path}: {copied} of {val} val rows have an exact copy in the training rows (same features: {copied} with the "
        f"same target, 0 with another): val scores count them as unseen; remove repeated rows from the CSV "
        f"(pandas: drop_duplicates)"]


# loss=mse on classes that are numbers ---------------------------------------------------------------

MSE_WARNING = "loss=mse on a classification target"


def test_mse_on_integer_classes_warns_and_points_to_regression(tmp_path):
    path, table = wine_csv(tmp_path / "wine.csv", rows=200, copies=0)
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=quality", "loss=mse", "trainer.max_epochs=1")
    classes = ", ".join(map(str, sorted(table["quality"].unique())))
    assert [w for w in logged_warnings(run_dir) if MSE_WARNING in w] == [
        f"{MSE_WARNING}: its classes {classes} are one-hot targets for the softmax outputs (softmax-MSE), not numbers "
        f"to predict; to predict the number use data.task=regression"]

    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=quality", "loss=mse", "data.task=regression",
                    "trainer.max_epochs=1", name="regression")
    assert not [w for w in logged_warnings(run_dir) if MSE_WARNING in w]


def test_mse_on_an_image_folder_is_a_deliberate_choice_no_warning(tmp_path):
    root = image_folder(tmp_path / "digits", per_class=4)
    for split in ("train", "val"):  # classes named by numbers, as digit folders are
        (root / split / "cat").rename(root / split / "0")
        (root / split / "dog").rename(root / split / "1")
    run_dir = train(tmp_path, "data=imagefolder", f"data.root={root}", "data.image_size=16", "data.num_workers=0",
                    "model=cnn", "model.channels=[4]", "loss=mse", "trainer.max_epochs=1")
    assert (run_dir / "train.log").exists()
    assert not [w for w in logged_warnings(run_dir) if MSE_WARNING in w]
