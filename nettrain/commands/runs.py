"""`nettrain runs [DIR] [--sort METRIC]`: the runs under outputs/ in one table, newest first (records.runs
reads them)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nettrain.commands.args import parse_args, run_command
from nettrain.config.paths import absolute
from nettrain.errors import UserError, invalid
from nettrain.records.runs import METRICS, Run, as_json, find_runs, format_metric, metric_columns, sort_runs

USAGE = """
usage: nettrain runs [[dir=]DIR] [sort=METRIC] [--json]

List the training runs under DIR (default: outputs), newest first: run dir,
date, experiment (or model), overrides, status, best val loss and accuracy,
epochs. Sweep jobs are runs too (a job's dir, whose name holds `=`, works as
DIR). sort=METRIC (or --sort METRIC) orders by a best metric instead, best
first: val_loss, val_accuracy, val_rmse, val_mae. --json prints the runs as a
JSON list instead of the table.

examples:
  nettrain runs
  nettrain runs outputs/multirun sort=val_accuracy
  nettrain runs --json | python -m json.tool
"""

STATUS_STYLE = {"completed": "green", "stopped_early": "green", "running": "cyan", "interrupted": "yellow"}


def show(*renderables: Any, stderr: bool = False) -> None:
    """Rich tables and lines at the terminal's width; in a pipe or file at $COLUMNS when set, else unwrapped
    (greppable, whole paths)."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console.width = 1000
    for renderable in renderables:
        console.print(renderable)


def runs_table(runs: list[Run], root: Path, width: int = 1000) -> Any:
    """One line per run when that fits `width`; else each run's dir, then its date, name and overrides, folded
    in one wide column beside the status and numbers (which never wrap)."""
    metrics = metric_columns(runs)
    cells = [(run.started.strftime("%m-%d %H:%M"), escape(str(run.path.relative_to(root))), escape(run.name),
              escape(" ".join(run.overrides)), f"[{STATUS_STYLE.get(run.status, 'red')}]{run.status}[/]",
              *(format_metric(m, run.best(m)) for m in metrics), str(run.epochs)) for run in runs]
    wide = ["date", "run", "experiment/model", "overrides", "status", *metrics, "epochs"]
    needed = sum(max([len(h)] + [len(plain(c[i])) for c in cells]) + 3 for i, h in enumerate(wide)) + 1
    if needed <= width:
        table = Table(title=f"runs under {root}", title_justify="left")
        for column in wide:
            table.add_column(column, justify="right" if column in (*metrics, "epochs") else "left", no_wrap=True)
        for row in cells:
            table.add_row(*row)
        return table
    table = Table(title=f"runs under {root}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run", overflow="fold", ratio=1)  # its dir; below it, its date, experiment/model, overrides
    for column in ("status", *metrics, "epochs"):
        table.add_column(SHORT.get(column, column), justify="left" if column == "status" else "right", no_wrap=True)
    for date, path, name, overrides, *rest in cells:
        table.add_row(f"{path}\n[dim]{date}  {name}{'  ' + overrides if overrides else ''}[/]", *rest)
    return table


SHORT = {"val_loss": "val loss", "val_accuracy": "val acc", "val_rmse": "val rmse", "val_mae": "val mae"}


def plain(markup: str) -> str:
    """The text a cell shows, without its markup."""
    return Text.from_markup(markup).plain


def _parse(argv: list[str]) -> tuple[Path, str | None, bool]:
    args: list[str] = []
    rest = iter(argv)
    for arg in rest:  # `--sort METRIC` and `--sort=METRIC` are `sort=METRIC`, `--json` is `json=true`
        if arg == "--sort":
            args.append(f"sort={next(rest, '')}")
        elif arg.startswith(("--sort=", "--json=")):
            args.append(arg[2:])
        elif arg == "--json":
            args.append("json=true")
        else:
            args.append(arg)
    parsed = parse_args(args, {"dir": "outputs", "sort": None, "json": False}, paths=("dir",), positional="dir")
    if parsed["sort"] is not None and parsed["sort"] not in METRICS:
        raise invalid("--sort", parsed["sort"], "allowed: " + ", ".join(METRICS))
    root = Path(absolute(parsed["dir"]))
    if not root.is_dir():
        raise UserError(f"no such directory: {parsed['dir']} (runs are listed from a dir such as outputs)")
    if not isinstance(parsed["json"], bool):
        raise invalid("json", parsed["json"], "allowed: true, false")
    return root, parsed["sort"], parsed["json"]


def _runs(argv: list[str]) -> int:
    root, sort, to_json = _parse(argv)
    runs = sorted(find_runs(root), key=lambda r: r.started, reverse=True)
    runs = sort_runs(runs, sort) if sort else runs
    if to_json:
        print(json.dumps(as_json(runs, root), indent=2))
        return 0
    if not runs:
        print(f"no runs under {root}", file=sys.stderr)
        return 0
    width = Console().width if os.environ.get("COLUMNS", "").isdigit() or Console().is_terminal else 1000
    show(runs_table(runs, root, width))
    return 0


def main(argv: list[str]) -> int:
    return run_command(_runs, argv, USAGE)


