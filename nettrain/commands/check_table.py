"""check-data for a CSV file (`data=csv`): each column's type, missing values and range, the target's balance,
the columns training would refuse, and data.table_checks' findings (row-id columns, columns that give the
target away, val rows copied from training rows), on the split training makes."""

from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nettrain.commands.report import SHOW, show_summary, weights_hint
from nettrain.config.paths import absolute
from nettrain.data.table_checks import check_table, drop_setting
from nettrain.data.tabular import choose_columns, detect_task, numeric_column, read_table, refused_id, split_rows
from nettrain.errors import UserError


def report(cfg: DictConfig, out: Console) -> list[str]:
    path = absolute(cfg.data.path)
    categorical = set(cfg.data.get("categorical") or [])
    table = read_table(path, list(categorical))
    target = cfg.data.target
    features, _ = choose_columns(table, cfg.data, path)
    labelled = table[table[target].notna()]
    problems, findings = [], []
    if labelled.empty:
        problems.append(f"no row has a value in the target column {target!r}: nothing to train on")
    else:
        try:  # the checks training makes too, on the split it makes (same val_fraction and seed)
            task, _, targets, train_idx, val_idx = split_rows(labelled, cfg.data, cfg.trainer.seed, path)
            findings = check_table(labelled, cfg.data, features, task, targets, (train_idx, val_idx))
        except UserError as e:  # a target training refuses (one class, a class of one row)
            problems.append(str(e))
    refused = {f.columns[0] for f in findings if refused_id(labelled, f, list(categorical), path)}
    out.print(f"[bold]{path}[/]  {len(table)} rows, {len(table.columns)} columns")
    out.print(columns_table(table, target, features, categorical, refused, path, problems))
    _target_report(cfg, table, labelled[target], out)
    duplicates = int(table.duplicated(subset=[*features, target]).sum())
    out.print(f"duplicate rows (same features and target): {duplicates}")
    for problem in problems:
        out.print(f"[red]problem:[/] {escape(problem)}")
    for finding in findings:
        out.print(f"[red]problem:[/] {escape(finding.message)}")
        for line in finding.details[:SHOW] if len(finding.details) > 1 else ():
            out.print(f"  {line}", markup=False)
    drop = [c for f in findings for c in f.columns]
    if len([f for f in findings if f.columns]) > 1 and not cfg.data.get("features"):
        out.print(f"every column named above left out: {escape(drop_setting(cfg.data, drop))}")
    problems += [f.message for f in findings]
    show_summary(out, problems, listed=True)
    return problems


def columns_table(table: pd.DataFrame, target: str, features: list[str], categorical: set[str], refused: set[str],
                  path: str, problems: list[str]) -> Table:
    """Each column's role, type as training reads it, missing values and range or examples; a column training
    would refuse adds its one-line reason to `problems`."""
    columns = Table(title="columns")
    for name in ("column", "role", "type", "missing", "distinct", "range / examples"):
        columns.add_column(name, justify="right" if name in ("missing", "distinct") else "left")
    for name in table.columns:
        col = table[name]
        role = "target" if name == target else "feature" if name in features else "unused"
        if name in categorical or not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            kind = "categorical" if name in categorical else "text"
            values = ", ".join(map(str, col.dropna().astype(str).value_counts().index[:3]))
            if name in refused:
                kind = "[red]text (row id)[/]"  # its finding says so: never "declare it categorical"
            elif role == "feature" and kind == "text":
                kind = _numeric_or(col, name, path, problems, "numeric", "[red]text (undeclared)[/]")
        else:
            values = f"{col.min():.4g} .. {col.max():.4g}" if col.notna().any() else "-"
            kind = "numeric" if role == "unused" else _numeric_or(col, name, path, problems, "numeric",
                                                                  "[red]numeric (not finite)[/]")
        missing = int(col.isna().sum())
        columns.add_row(name, role, kind, f"{missing} ({missing / len(table):.0%})" if missing else "0",
                        str(col.nunique()), values)
    return columns


def _numeric_or(col: pd.Series, name: str, path: str, problems: list[str], good: str, bad: str) -> str:
    """`good` when training reads the column as numbers, else `bad`, with the reason added to `problems`."""
    try:
        numeric_column(col, name, path)
        return good
    except UserError as e:
        problems.append(str(e))
        return bad


def _target_report(cfg: DictConfig, table: pd.DataFrame, y: pd.Series, out: Console) -> None:
    """The target: its mean and range for numbers, else its balance of classes; the rows without one."""
    target = cfg.data.target
    if not y.empty and detect_task(y, cfg.data.task) == "regression":
        out.print(f"target {target!r}: regression, mean {y.mean():.4g}, std {y.std():.4g}, "
                  f"range {y.min():.4g} .. {y.max():.4g}")
    elif not y.empty:
        balance = Table(title=f"target {target!r}")
        balance.add_column("class")
        balance.add_column("rows", justify="right")
        balance.add_column("share", justify="right")
        counts = y.astype(str).value_counts()
        for value, n in counts.items():
            balance.add_row(str(value), str(n), f"{n / len(y):.1%}")
        out.print(balance)
        imbalance = counts.max() / counts.min()
        out.print(f"imbalance (largest / smallest class): {imbalance:.1f}x{weights_hint(cfg, imbalance)}")
    if table[target].isna().any():
        out.print(f"{int(table[target].isna().sum())} row(s) without a target are left out by training")
