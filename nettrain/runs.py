"""`nettrain runs [DIR] [--sort METRIC]`: the runs under outputs/ in one table, newest first.

A run is a dir Hydra made for `nettrain train` (it holds `.hydra/`) with a `metrics.json`. What the
table shows comes from those files only, so it works for finished, failed and running runs alike.
The sweep summary (`nettrain.sweep`) reads its jobs with the same `read_run`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nettrain.config import absolute, monitor_mode
from nettrain.errors import UserError, invalid

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

METRICS = ("val_loss", "val_accuracy", "val_rmse", "val_mae")  # the best-epoch metrics metrics.json holds
OK_STATUSES = ("completed", "stopped_early")
STATUS_STYLE = {"completed": "green", "stopped_early": "green", "running": "cyan", "interrupted": "yellow"}


@dataclass
class Run:
    path: Path
    started: datetime              # when Hydra (last) launched it: the time of its .hydra/config.yaml
    name: str                      # the experiment, else the model
    overrides: list[str]           # as given on the command line (.hydra/overrides.yaml)
    record: dict[str, Any] = field(default_factory=dict)  # metrics.json ({} when the job wrote none)

    @property
    def status(self) -> str:
        return str(self.record.get("status", "no result"))

    def best(self, metric: str) -> float | None:
        value = (self.record.get("best") or {}).get(metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    @property
    def epochs(self) -> int:
        return int(self.record.get("epochs") or 0)

    @property
    def seconds(self) -> float:
        """The run's wall time, set-up included (the epochs' own time for a run recorded before it was kept)."""
        if isinstance(self.record.get("total_seconds"), (int, float)):
            return float(self.record["total_seconds"])
        return sum(float(h.get("seconds", 0)) for h in self.record.get("history", []))


def read_run(path: Path) -> Run:
    """A run dir's overrides, config name and metrics (all optional: a job may have died early)."""
    import json

    hydra_dir = path / ".hydra"
    overrides: list[str] = []
    name = "?"
    if (hydra_dir / "overrides.yaml").is_file():
        overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    if (hydra_dir / "config.yaml").is_file():
        name = str(OmegaConf.select(OmegaConf.load(hydra_dir / "config.yaml"), "model.name", default="?"))
    experiment = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")), None)
    stamp = hydra_dir / "config.yaml" if (hydra_dir / "config.yaml").is_file() else path
    try:
        record = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        record = {}
    return Run(path=path, started=datetime.fromtimestamp(stamp.stat().st_mtime), name=experiment or name,
               overrides=overrides, record=record if isinstance(record, dict) else {})


def find_runs(root: Path) -> list[Run]:
    """Every training run under `root` (eval and lr-find outputs are not runs)."""
    return [read_run(d.parent) for d in sorted(root.rglob(".hydra")) if (d.parent / "metrics.json").is_file()]


def sort_runs(runs: list[Run], metric: str, mode: str = "auto") -> list[Run]:
    """Best first by `metric` (accuracy up, losses and errors down); runs without it last, in order."""
    sign = -1.0 if monitor_mode(metric, mode) == "max" else 1.0
    return sorted(runs, key=lambda r: (r.best(metric) is None, sign * (r.best(metric) or 0.0)))


def format_metric(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if "accuracy" in metric else f"{value:.4f}"


def metric_columns(runs: list[Run], always: tuple[str, ...] = ("val_loss", "val_accuracy")) -> list[str]:
    """val loss and accuracy, plus any other best metric a run has (regression: rmse, mae)."""
    return [m for m in METRICS if m in always or any(r.best(m) is not None for r in runs)]


def show(*renderables: Any, stderr: bool = False) -> None:
    """Rich tables and lines at the terminal's width; in a pipe or file at $COLUMNS when set, else unwrapped
    (greppable, whole paths)."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console.width = 1000
    for renderable in renderables:
        console.print(renderable)


def runs_table(runs: list[Run], root: Path, width: int = 1000) -> Any:
    """One line per run when that fits `width`; else each run's dir, then its date, name and overrides, folded
    in one wide column beside the status and numbers (which never wrap)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

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
    from rich.text import Text

    return Text.from_markup(markup).plain


def as_json(runs: list[Run], root: Path) -> list[dict[str, Any]]:
    return [{"run_dir": str(r.path), "started": r.started.isoformat(timespec="seconds"), "name": r.name,
             "overrides": r.overrides, "status": r.status, "best": {m: r.best(m) for m in METRICS if r.best(m) is not None},
             "best_epoch": r.record.get("best_epoch"), "epochs": r.epochs, "seconds": round(r.seconds, 3)} for r in runs]


def _parse(argv: list[str]) -> tuple[Path, str | None, bool]:
    from nettrain.inference import parse_args

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
    import json
    import sys

    root, sort, to_json = _parse(argv)
    runs = sorted(find_runs(root), key=lambda r: r.started, reverse=True)
    runs = sort_runs(runs, sort) if sort else runs
    if to_json:
        print(json.dumps(as_json(runs, root), indent=2))
        return 0
    if not runs:
        print(f"no runs under {root}", file=sys.stderr)
        return 0
    from rich.console import Console

    width = Console().width if os.environ.get("COLUMNS", "").isdigit() or Console().is_terminal else 1000
    show(runs_table(runs, root, width))
    return 0


def main(argv: list[str]) -> int:
    from nettrain.inference import run_command

    return run_command(_runs, argv, USAGE)


def latest_resumable(root: Path) -> Path:
    """The run under `root` whose `checkpoints/last.pt` was written last (`resume=last`): the run just
    stopped or killed, or just finished (resumed with a larger trainer.max_epochs, it trains on)."""
    runs = [(last.stat().st_mtime, last.parent.parent) for last in root.rglob("checkpoints/last.pt")] if root.is_dir() else []
    if not runs:
        raise UserError(f"resume=last: no run with a checkpoint under {absolute(str(root))}; give resume=RUN_DIR")
    return max(runs)[1]
