"""Rows of a CSV file (`data=csv`): sensor readings, transactions, measurements.

Columns: `data.target` is what to predict; the features are `data.features` (default: every other
column, less `data.drop`). Columns named in `data.categorical` are one-hot encoded over the
categories seen in the training split; every other feature must be numeric and is standardized
with the training split's mean and standard deviation.

Missing values: a missing number becomes the training mean (0 after standardizing); a missing
category is a category of its own ("<missing>"); a category never seen in training encodes as all
zeros. Rows without a target are left out (counted in the log).

The statistics and vocabularies are stored in the spec's preprocessing (kind "tabular"), so
`encode_rows` turns new rows into exactly the inputs the model was trained on, from the checkpoint
alone. `data.task=auto` is regression when the target holds non-integer numbers, else classification.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor

from nettrain.config.rules import absolute
from nettrain.data.base import Data, DataContext, files_fingerprint, tensor_loader
from nettrain.data.labels import balanced_weights, keep_order, split_indices
from nettrain.data.spec import DataSpec
from nettrain.data.table_checks import check_table
from nettrain.errors import UserError, invalid

log = logging.getLogger("nettrain")

MISSING = "<missing>"


def read_table(path: str | Path, categorical: list[str] = ()) -> Any:
    """The CSV at `path` as a pandas DataFrame (categorical columns kept as text)."""
    _refuse_repeated_columns(path)
    try:
        table = pd.read_csv(path, dtype={c: str for c in categorical}, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty: a CSV file needs a header line and at least one row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read {path} as CSV: {str(e).strip().splitlines()[0]}") from None
    if table.empty:
        raise UserError(f"{path} has no rows, only a header")
    return table


def _refuse_repeated_columns(path: str | Path) -> None:
    """A header naming a column twice: pandas would rename the second (`a.1`) and train on it unnamed."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f, skipinitialspace=True), [])
    except OSError:
        return  # read_csv names the problem
    seen: dict[str, int] = {}
    for i, name in enumerate(header, 1):
        if name in seen:
            raise UserError(f"{path}: column {name!r} is named twice in the header (columns {seen[name]} and {i}); "
                            f"rename one of them")
        seen[name] = i


# Inputs are float32: a value past this (inf, 1e308) would be inf there, and a loss of inf or NaN
# would be blamed on the learning rate.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def numeric_column(column: Any, name: str, path: str | Path, trained: bool = False) -> Any:
    """The column as floats, or a one-line error naming a value that is not a number or not finite. For
    the input of a `trained` model the remedy is the value, never the config that shaped the model."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        values = column.astype("float64")
    else:
        values = pd.to_numeric(column, errors="coerce")
        bad = column[values.isna() & column.notna()]
        if len(bad):
            mostly_numbers = len(bad) <= 0.1 * column.notna().sum()
            remedy = ("the model was trained on numbers there: fix or remove the row" if trained else
                      f"{len(bad)} of its {column.notna().sum()} values are not numbers: fix or remove "
                      f"{'that row' if len(bad) == 1 else 'those rows'}" if mostly_numbers else
                      f"declare it categorical with data.categorical=[{name}] or leave it out with data.drop=[{name}]")
            raise UserError(f"column {name!r} of {path} is not numeric (e.g. {bad.iloc[0]!r} on line {bad.index[0] + 2}); "
                            f"{remedy}")
        values = values.astype("float64")
    huge = values[values.abs() > FLOAT32_MAX]
    if len(huge):
        or_drop = "" if trained else f" (or data.drop=[{name}])"
        raise UserError(f"column {name!r} of {path} holds {float(huge.iloc[0]):g} on line {huge.index[0] + 2}: values must be "
                        f"finite and within +-{FLOAT32_MAX:.3g}; fix or remove the row{or_drop}")
    return values


def choose_columns(table: Any, cfg: DictConfig, path: str) -> tuple[list[str], list[str]]:
    """(features in order, the categorical ones), every name checked against the file's header."""
    columns = list(table.columns)
    if cfg.target not in columns:
        raise invalid("data.target", cfg.target, f"no such column in {path}; its columns: {', '.join(columns)}")
    for key in ("features", "drop", "categorical"):
        for name in cfg.get(key) or []:
            if name not in columns:
                raise invalid(f"data.{key}", name, f"no such column in {path}; its columns: {', '.join(columns)}")
    drop = set(cfg.get("drop") or [])
    features = list(cfg.features) if cfg.get("features") else [c for c in columns if c != cfg.target and c not in drop]
    if cfg.target in features:
        raise invalid("data.features", cfg.target, "the target column cannot also be a feature")
    if not features:
        raise UserError(f"no feature columns left in {path} (target {cfg.target!r}, dropped: {', '.join(drop)})")
    categorical = [c for c in features if c in set(cfg.get("categorical") or [])]
    return features, categorical


def model_columns(table: Any, trained: dict[str, Any], cfg: DictConfig, path: str) -> tuple[list[str], list[str]]:
    """(features, the categorical ones) of a trained model's `trained` preprocessing, each found in `table`: new
    rows for it must hold the columns it was trained on (others are left out), and the target."""
    columns = list(table.columns)
    if cfg.target not in columns:
        raise invalid("data.target", cfg.target, f"no such column in {path}; its columns: {', '.join(columns)}")
    absent = [name for name in trained["features"] if name not in columns]
    if absent:
        raise UserError(f"{path} has no column {absent[0]!r}: the model was trained on the columns "
                        f"{', '.join(trained['features'])}")
    return list(trained["features"]), list(trained["categories"])


def fit_preprocessing(rows: Any, features: list[str], categorical: list[str], path: str | Path) -> dict[str, Any]:
    """Statistics and vocabularies of the training rows: everything `encode_rows` needs."""
    numeric, fill, categories = {}, {}, {}
    for name in features:
        if name in categorical:
            categories[name] = sorted(set(rows[name].fillna(MISSING).astype(str)))
            continue
        values = numeric_column(rows[name], name, path)
        mean = float(values.mean()) if values.notna().any() else 0.0
        std = float(values.std(ddof=0)) if values.notna().any() else 1.0
        numeric[name] = [mean, std if np.isfinite(std) and std > 0 else 1.0]  # constant column: centred only
        fill[name] = mean
    return {"kind": "tabular", "features": features, "numeric": numeric, "fill": fill, "categories": categories,
            "missing": MISSING}


def encode_rows(rows: Any, preprocessing: dict[str, Any]) -> Tensor:
    """float32 [rows, inputs] model inputs for `rows` (a pandas DataFrame or the path of a CSV file
    with at least the feature columns), encoded with a checkpoint's spec.preprocessing."""
    if preprocessing.get("kind") != "tabular":
        raise UserError(f"this model was trained on {preprocessing.get('kind', 'unknown')} data, not CSV rows")
    source = rows if isinstance(rows, (str, Path)) else "the input"
    if isinstance(rows, (str, Path)):
        rows = read_table(rows, list(preprocessing["categories"]))
    absent = [c for c in preprocessing["features"] if c not in rows.columns]
    if absent:
        raise UserError(f"{source} has no column {absent[0]!r}; the model needs: {', '.join(preprocessing['features'])}")
    blocks = []
    for name in preprocessing["features"]:
        if name in preprocessing["categories"]:
            values = rows[name].fillna(preprocessing.get("missing", MISSING)).astype(str).to_numpy()
            blocks.append(values[:, None] == np.asarray(preprocessing["categories"][name], dtype=object)[None, :])
        else:
            mean, std = preprocessing["numeric"][name]
            values = numeric_column(rows[name], name, source, trained=True).fillna(preprocessing["fill"][name]).to_numpy()
            blocks.append(((values - mean) / std)[:, None])
    return torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32))


def refused_id(table: Any, finding: Any, categorical: list[str], path: str | Path) -> bool:
    """Whether `finding` is an id-like text column that training would refuse as not numeric: its error
    then says it is an id to leave out, never to declare it categorical."""
    if finding.kind != "id" or finding.columns[0] in categorical:
        return False
    try:
        numeric_column(table[finding.columns[0]], finding.columns[0], path)
    except UserError:
        return True
    return False


def detect_task(target: Any, requested: str) -> str:
    if requested != "auto":
        return requested
    if pd.api.types.is_float_dtype(target) and not (target.dropna() == target.dropna().round()).all():
        return "regression"
    return "classification"


def _classes(target: Any, known: list[str] | None = None) -> tuple[list[str], list[int]]:
    """Class names (the distinct values, sorted: numbers in numeric order, 1.0 shown as 1; a trained model's
    `known` classes first, in its order) and each row's class index."""
    if not pd.api.types.is_numeric_dtype(target):
        target = target.astype(str)
    values = sorted(target.unique())
    names = [str(int(v)) if isinstance(v, (int, float, np.number)) and float(v).is_integer() else str(v) for v in values]
    order = keep_order(names, known)
    index = {v: order.index(name) for v, name in zip(values, names)}
    return order, [index[v] for v in target]


def split_rows(table: Any, cfg: DictConfig, seed: int, path: str | Path,
               known: list[str] | None = None) -> tuple[str, list[str], np.ndarray, list[int], list[int]]:
    """(task, class names, each row's target, train and val row positions): the split training makes over
    `table`'s rows (all with a target), stratified by class for classification. check-data reuses it.
    `known`: a trained model's classes, kept first in its order."""
    task = detect_task(table[cfg.target], cfg.task)
    if task == "regression":
        targets = numeric_column(table[cfg.target], cfg.target, path).to_numpy()
        train_idx, val_idx = split_indices(targets.tolist(), cfg.val_fraction, seed,
                                           stratify=False, what=path)
        return task, [], targets, train_idx, val_idx
    class_names, labels = _classes(table[cfg.target], known)
    if len(class_names) < 2:
        raise UserError(f"{path}: the target column {cfg.target!r} holds one class only ({class_names[0]!r}); "
                        f"classification needs at least two (for numbers to predict, use data.task=regression)")
    train_idx, val_idx = split_indices(labels, cfg.val_fraction, seed, class_names=class_names, what=path)
    return task, class_names, np.asarray(labels, dtype=np.int64), train_idx, val_idx


def build(cfg: DictConfig, ctx: DataContext) -> Data:
    path = absolute(cfg.path)
    trained = ctx.preprocessing_for("tabular")
    table = read_table(path, list(trained["categories"]) if trained else list(cfg.get("categorical") or []))
    features, categorical = model_columns(table, trained, cfg, path) if trained else choose_columns(table, cfg, path)
    unlabelled = int(table[cfg.target].isna().sum())
    if unlabelled:
        log.warning("%s: %d row(s) without a %r value left out", path, unlabelled, cfg.target)
        table = table[table[cfg.target].notna()]  # keeps the row labels: errors name the file line
    if table.empty:
        raise UserError(f"{path}: no row has a value in the target column {cfg.target!r}")
    task, class_names, targets, train_idx, val_idx = split_rows(table, cfg, ctx.seed, path, ctx.classes)
    y = torch.tensor(targets, dtype=torch.float32 if task == "regression" else torch.long)
    findings = check_table(table, cfg, features, task, targets, (train_idx, val_idx))
    for finding in findings:
        if refused_id(table, finding, categorical, path):  # training refuses the text anyway: say what it is
            raise UserError(f"{path}: {finding.message}")
    preprocessing = trained or fit_preprocessing(table.iloc[train_idx], features, categorical, path)
    x = encode_rows(table, preprocessing)
    for finding in findings:  # after every refusal: a refused run logs (and so writes) nothing
        log.warning("%s: %s", path, finding.message)
    spec = DataSpec(input_shape=[x.shape[1]], num_classes=len(class_names) if class_names else 1,
                    class_names=class_names, task=task, preprocessing=preprocessing)
    train_idx, val_idx = torch.tensor(train_idx), torch.tensor(val_idx)
    counts = Counter(y[train_idx].tolist()) if class_names else {}
    log.info("%s: %d train / %d val rows, %d features -> %d inputs (%d categorical), %s of %r%s", path,
             len(train_idx), len(val_idx), len(features), x.shape[1], len(categorical), task, cfg.target,
             f" into {len(class_names)} classes (" + ", ".join(f"{n} {counts[i]}" for i, n in enumerate(class_names[:10]))
             + (", ..." if len(class_names) > 10 else "") + ")" if class_names else "")
    return Data(spec=spec,
                train=tensor_loader(x[train_idx], y[train_idx], cfg, ctx, train=True),
                val=tensor_loader(x[val_idx], y[val_idx], cfg, ctx, train=False),
                class_weights=balanced_weights(y[train_idx].tolist(), len(class_names))
                if class_names and cfg.get("class_weights") == "balanced" else None,
                fingerprint=files_fingerprint([Path(path)]),
                rows=(x[train_idx], y[train_idx]))
