"""The runs under a dir, read back from what each left on disk: `.hydra/` (its overrides) and `metrics.json`.

A run is a dir Hydra made for `nettrain train` (it holds `.hydra/`) with a `metrics.json`; finished, failed
and running runs read alike. `nettrain runs` and a sweep's summary both read runs through `read_run`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nettrain.config.paths import absolute
from nettrain.config.rules import monitor_mode
from nettrain.errors import UserError
from nettrain.files import atomic_write_text

# The statuses of a run that ended by itself: a resume or a sweep's re-run has nothing left to do for it.
FINISHED = ("completed", "stopped_early", "diverged")


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A run's metrics.json (None when it has none, or a torn one)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def record_status(run_dir: Path, status: str, error: str, **fields: Any) -> None:
    """A job that failed (or was stopped) keeps its dir with the status and the error, so a sweep summary
    lists it. The record is the latest on disk: every epoch already recorded is kept."""
    record = (read_metrics(run_dir) or {}) | {"status": status, "error": error, **fields}
    record.setdefault("history", [])
    try:
        atomic_write_text(run_dir / "metrics.json", json.dumps(record, indent=2, default=str) + "\n")
    except UserError:
        pass  # the disk refuses writes: the last complete metrics.json stays


METRICS = ("val_loss", "val_accuracy", "val_rmse", "val_mae")  # the best-epoch metrics metrics.json holds
OK_STATUSES = ("completed", "stopped_early")


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


def latest_resumable(root: Path) -> Path:
    """The run under `root` whose `checkpoints/last.pt` was written last (`resume=last`): the run just
    stopped or killed, or just finished (resumed with a larger trainer.max_epochs, it trains on)."""
    runs = [(last.stat().st_mtime, last.parent.parent) for last in root.rglob("checkpoints/last.pt")] if root.is_dir() else []
    if not runs:
        raise UserError(f"resume=last: no run with a checkpoint under {absolute(str(root))}; give resume=RUN_DIR")
    return max(runs)[1]


def as_json(runs: list[Run], root: Path) -> list[dict[str, Any]]:
    return [{"run_dir": str(r.path), "started": r.started.isoformat(timespec="seconds"), "name": r.name,
             "overrides": r.overrides, "status": r.status, "best": {m: r.best(m) for m in METRICS if r.best(m) is not None},
             "best_epoch": r.record.get("best_epoch"), "epochs": r.epochs, "seconds": round(r.seconds, 3)} for r in runs]
