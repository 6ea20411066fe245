"""What sinks a model trained on a real table, found before training: row-id columns, columns that give
the target away (leakage), and val rows with an exact copy in the training rows.

`check_table` is the one place these are decided: `nettrain check-data` prints each finding as a
problem (with details), and `data=csv` training logs each as a one-line warning and goes on. Every
check is a few vectorized pandas/numpy passes over the columns: a 100k-row table costs well under a
second. Nothing here changes what training computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

# A column is id-like when (nearly) every row has its own value: products codes, sequence numbers.
ID_DISTINCT = 0.95      # share of the rows with a value that must be distinct
MIN_ROWS = 20           # below this, "every value distinct" says nothing
ID_NAME = re.compile(r"(^|[^a-z0-9])(id|uid|udi|uuid|guid|index|idx|key|row|rowid|rownum)$|^unnamed: ?\d+$",
                     re.IGNORECASE)
CAMEL_ID = re.compile(r"[a-z](Id|ID)$")  # CustomerId, PassengerID

# Leakage (classification). A column gives the target away when its values alone match the target on
# LEAK_AGREEMENT of the rows AND leave at most MOSTLY of the errors of always answering the majority class
# (a column of zeros "agrees" 96.6% with a 3.4% target: that is the baseline, not a leak). Or when some of
# its values (each on IMPLY_ROWS rows or more) imply a minority class with LEAK_AGREEMENT purity and those
# values together match the target as well.
LEAK_AGREEMENT = 0.99
MOSTLY = 0.25
IMPLY_ROWS = 10
LOW_CARDINALITY = 50    # values mapped one by one only for columns with at most this many ...
VALUE_ROWS = 20         # ... and at least this many rows per value on average (else an id maps "perfectly")
SAMPLE = 2000           # rows looked at first to tell a many-valued column cheaply
MOSTLY_NUMBERS = 0.9    # a text column whose values are numbers this often is a numeric column with bad cells
COPY_CORRELATION = 0.999  # regression: a feature this correlated with the target is (a linear copy of) it


@dataclass
class Finding:
    kind: str                # id | leak | duplicates
    message: str             # one line: what is wrong and the fix (training logs it as a warning)
    columns: list[str] = field(default_factory=list)   # the columns the fix leaves out
    details: list[str] = field(default_factory=list)   # more lines for check-data


def leave_out(cfg: DictConfig, columns: list[str]) -> str:
    """The fix that leaves `columns` out, keeping the columns the config already leaves out."""
    pronoun = "it" if len(columns) == 1 else "them"
    if cfg.get("features"):
        return f"leave {pronoun} out of data.features"
    return f"leave {pronoun} out with {drop_setting(cfg, columns)}"


def drop_setting(cfg: DictConfig, columns: list[str]) -> str:
    """data.drop=[...]: what the config drops already, and `columns`."""
    return f"data.drop=[{','.join(dict.fromkeys([*(cfg.get('drop') or []), *columns]))}]"


def check_table(table: Any, cfg: DictConfig, features: list[str], task: str, targets: np.ndarray,
                split: tuple[list[int], list[int]] | None = None) -> list[Finding]:
    """Findings on the labelled rows of `table` (row i has target `targets[i]`: a class index for
    classification, a number for regression); `split` (train and val row positions, the split training
    makes) adds the val rows that are copies of training rows."""
    ids = id_columns(table, cfg, features)
    findings = list(ids)
    others = [c for c in features if c not in {f.columns[0] for f in ids}]
    leak = (leaking_classes(table, cfg, others, np.asarray(targets)) if task == "classification"
            else leaking_numbers(table, cfg, others, np.asarray(targets, dtype=np.float64)))
    if leak:
        findings.append(leak)
    if split is not None:
        copies = val_copies(table, cfg, features, *split)
        if copies:
            findings.append(copies)
    return findings


def _integers(values: Any) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return True
    return pd.api.types.is_float_dtype(values) and bool((values == np.floor(values)).all())


def id_columns(table: Any, cfg: DictConfig, features: list[str]) -> list[Finding]:
    """Features with a value of their own on (nearly) every row. Numbers only when they are integers,
    (nearly) all distinct AND in file order (1..N) or named like an id: a measurement with 3 decimals
    is distinct on every row too, and is no id. Text when distinct on ~every row (a product code)."""
    found = []
    for name in features:
        values = table[name].dropna()
        if len(values) < MIN_ROWS:
            continue
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            named = bool(ID_NAME.search(str(name).strip()) or CAMEL_ID.search(str(name).strip()))
            if not (_integers(values) and (named or values.is_monotonic_increasing or values.is_monotonic_decreasing)):
                continue  # checked first: cheaper than counting distinct values
        elif pd.to_numeric(values, errors="coerce").notna().mean() >= MOSTLY_NUMBERS:
            continue  # numbers with a few bad cells: the numeric check names the cell, dropping the column is no fix
        distinct = values.nunique()
        if distinct < ID_DISTINCT * len(values):
            continue
        found.append(Finding("id", f"column {name!r} looks like a row id ({distinct} distinct values in {len(values)} "
                                   f"rows): {leave_out(cfg, [name])}", [name]))
    return found


def _plain(value: Any) -> str:
    """1.0 -> 1, as the user would write the value."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def leaking_classes(table: Any, cfg: DictConfig, features: list[str], y: np.ndarray) -> Finding | None:
    """Columns that give a class target away: (a) a column whose values map to the target (value by value,
    or above/below one threshold for a binary target) on LEAK_AGREEMENT of the rows, removing most of the
    majority-class baseline's errors; (b) values of low-cardinality columns that each imply a minority class
    with LEAK_AGREEMENT purity and, together, match the target as well. A strong honest feature (alcohol
    for wine quality, torque for machine failure) does neither."""
    n, k = len(y), int(y.max()) + 1 if len(y) else 0
    counts = np.bincount(y, minlength=k)
    majority = int(counts.argmax()) if n else 0
    baseline_errors = n - int(counts.max()) if n else 0
    if n < MIN_ROWS or baseline_errors == 0:
        return None
    allowed = min((1 - LEAK_AGREEMENT) * n, MOSTLY * baseline_errors)  # errors a leaking column may make
    names = _class_names(table, cfg, y)
    single: dict[str, str] = {}               # (a): column -> why
    implied: dict[str, list[str]] = {}        # (b): column -> its implying values
    rule = np.full(n, -1)                     # (b): the class some implying value gives each row, -1 none
    for name in features:
        column = table[name]
        if n > 10 * SAMPLE and column.iloc[:SAMPLE].nunique() > LOW_CARDINALITY:
            codes, uniques = None, range(LOW_CARDINALITY + 1)  # many values already: no need to list them all
        else:
            codes, uniques = pd.factorize(column)
        m = len(uniques)
        if m < 2 and not column.isna().any():
            continue
        if m <= LOW_CARDINALITY and n >= VALUE_ROWS * (m + 1):
            codes = np.where(codes < 0, m, codes)  # a missing value is a value of its own
            cross = np.bincount(codes * k + y, minlength=(m + 1) * k).reshape(m + 1, k)
            rows, best = cross.sum(1), cross.argmax(1)
            errors = n - int(cross.max(1).sum())
            if errors <= allowed:
                single[name] = (f"its {m} values map to {cfg.target!r} on {1 - errors / n:.1%} of rows (the "
                                f"majority class alone: {1 - baseline_errors / n:.1%})")
            pure = (rows >= IMPLY_ROWS) & (cross.max(1) >= LEAK_AGREEMENT * rows) & (best != majority)
            for v in np.flatnonzero(pure[:m]):
                share = cross[v, best[v]] / rows[v]
                implied.setdefault(name, []).append(
                    f"{'each of the' if share == 1 else f'{share:.1%} of the'} {rows[v]} rows with "
                    f"{name}={_plain(uniques[v])} {'is' if share == 1 else 'are'} {cfg.target!r}={names[best[v]]}")
                rule[(codes == v) & (rule < 0)] = best[v]
        elif k == 2 and pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            errors, cut = _threshold_errors(column.to_numpy(dtype=np.float64), y)
            if errors <= allowed:
                single[name] = (f"{name} above / below {cut:.4g} matches {cfg.target!r} on {1 - errors / n:.1%} of "
                                f"rows (the majority class alone: {1 - baseline_errors / n:.1%})")
    together = 0.0
    if implied:
        together = float(np.mean(np.where(rule >= 0, rule, majority) == y))
        if n - together * n > allowed + 1e-9:
            implied = {}  # pure values, but the target is not given away: honest features
    columns = list(dict.fromkeys([*single, *implied]))
    if not columns:
        return None
    details = [f"{name}: {why}" for name, why in single.items()] + [line for lines in implied.values() for line in lines]
    if len(columns) == 1:
        how = next(iter(single.values())) if single else "; ".join(details)
        return Finding("leak", f"column {columns[0]!r} gives the target away ({how}): {leave_out(cfg, columns)}",
                       columns, details)
    how = f"together they match the target on {together:.1%} of rows" if len(implied) > 1 else f"e.g. {details[0]}"
    return Finding("leak", f"columns {', '.join(columns)} give the target away ({how}): {leave_out(cfg, columns)}",
                   columns, details)


def _class_names(table: Any, cfg: DictConfig, y: np.ndarray) -> list[str]:
    """Each class index's name as the target column writes it (the value of its first row)."""
    first = np.unique(y, return_index=True)
    names = [""] * (int(y.max()) + 1)
    for c, i in zip(*first):
        names[c] = _plain(table[cfg.target].iloc[i])
    return names


def _threshold_errors(values: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """Fewest errors of "class 1 above a cut, 0 below" (or the reverse) for a binary target, and the cut;
    rows without a value count as errors unless they are the majority class."""
    known = ~np.isnan(values)
    v, t = values[known], y[known]
    order = np.argsort(v)  # ties in any order: cuts fall only between different values
    v, t = v[order], t[order]
    ones = np.concatenate([[0], np.cumsum(t)])          # class-1 rows among the first i
    i = np.arange(len(v) + 1)
    cuts = np.concatenate([[True], v[1:] != v[:-1], [True]])  # cut only between different values
    total = int(ones[-1])
    low_is_zero = ones + (len(v) - i) - (total - ones)   # 1s below the cut + 0s above it
    low_is_one = (i - ones) + (total - ones)
    errors = np.where(cuts, np.minimum(low_is_zero, low_is_one), len(y))
    best = int(errors.argmin())
    missing = y[~known]
    missing_errors = min(int(missing.sum()), len(missing) - int(missing.sum()))
    cut = float(v[min(best, len(v) - 1)]) if len(v) else 0.0
    return int(errors[best]) + missing_errors, cut


def leaking_numbers(table: Any, cfg: DictConfig, features: list[str], y: np.ndarray) -> Finding | None:
    """Numeric features equal to a regression target, or an exact linear copy of it."""
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    if not numeric or len(y) < 3 or np.std(y) == 0:
        return None
    x = table[numeric].to_numpy(dtype=np.float64)
    known = ~np.isnan(x)  # each column's correlation over the rows where it has a value
    rows = known.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(known, x - np.nanmean(x, axis=0), 0.0)
        t = y - y.mean()
        ty, tt = known.T @ t, known.T @ (t * t)
        cov = x.T @ t - x.sum(0) * ty / rows
        corr = pd.Series(np.abs(cov / np.sqrt(((x * x).sum(0) - x.sum(0) ** 2 / rows) * (tt - ty ** 2 / rows))),
                         index=numeric)
    copies = [c for c in numeric if corr[c] >= COPY_CORRELATION]
    if not copies:
        return None
    details = [f"{c}: correlation with {cfg.target!r} {corr[c]:.4f}" for c in copies]
    what = f"column {copies[0]!r} is a copy" if len(copies) == 1 else f"columns {', '.join(copies)} are copies"
    return Finding("leak", f"{what} of the target {cfg.target!r} (correlation {corr[copies].min():.4f}): "
                           f"{leave_out(cfg, copies)}", copies, details)


def val_copies(table: Any, cfg: DictConfig, features: list[str], train_idx: list[int],
               val_idx: list[int]) -> Finding | None:
    """Val rows whose features equal a training row's: the model has seen them, val flatters it."""
    features_hash = pd.util.hash_pandas_object(table[features], index=False).to_numpy()
    target_hash = pd.util.hash_pandas_object(table[cfg.target], index=False).to_numpy()
    row_hash = features_hash ^ (target_hash * np.uint64(0x9E3779B97F4A7C15))  # features and target
    copied = pd.Series(features_hash[val_idx]).isin(features_hash[train_idx]).to_numpy()
    same = copied & pd.Series(row_hash[val_idx]).isin(row_hash[train_idx]).to_numpy()
    n, agree = int(copied.sum()), int(same.sum())
    if not n:
        return None
    return Finding("duplicates", f"{n} of {len(val_idx)} val rows have an exact copy in the training rows (same "
                                 f"features: {agree} with the same target, {n - agree} with another): val scores "
                                 f"count them as unseen; remove repeated rows from the CSV (pandas: drop_duplicates)")
