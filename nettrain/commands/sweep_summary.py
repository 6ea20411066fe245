"""Hydra callback for sweeps: a summary of every job when a multirun ends.

The summary is read from the job dirs in the sweep dir (each job's .hydra/overrides.yaml and
metrics.json), not from what the launcher returned: launchers that run jobs in other processes or on
other machines (joblib, SLURM) return nothing useful here, while the files are the same for all of
them, and they include the jobs a resumed sweep skipped. For the same reason the sweep's exit code
is decided here (its worst job's, raised as SystemExit): a job that failed in a worker process cannot set it.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from nettrain.commands.runs import STATUS_STYLE, show
from nettrain.commands.train import exit_code
from nettrain.config.paths import absolute
from nettrain.files import atomic_write_text
from nettrain.records.console import console
from nettrain.records.runs import OK_STATUSES, Run, format_metric, metric_columns, read_run, sort_runs


def job_number(job_dir: Path) -> int:
    """The job's number in its sweep (hydra.job.num, the start of its dir name)."""
    head = job_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else -1


def sweep_jobs(sweep_dir: Path) -> list[Run]:
    """The job dirs of a sweep (the dirs Hydra made, `NUM_overrides`), in job order."""
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()] if sweep_dir.is_dir() else []
    return [read_run(d) for d in sorted(dirs, key=lambda d: (job_number(d), d.name))]


def write_summary_csv(path: Path, jobs: list[Run], metrics: list[str]) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["job", "overrides", "status", *metrics, "best_epoch", "epochs", "seconds", "error"])
    for job in jobs:
        writer.writerow([job.path.name, " ".join(job.overrides), job.status,
                         *("" if job.best(m) is None else job.best(m) for m in metrics),
                         job.record.get("best_epoch") or "", job.epochs, round(job.seconds, 1),
                         job.record.get("error", "")])
    atomic_write_text(path, out.getvalue())


def summary_table(jobs: list[Run], metrics: list[str], title: str) -> Any:
    """Jobs as rows; only the overrides that differ between jobs (the shared ones go in the caption)."""
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
    table = Table(title=title, title_justify="left",
                  caption=f"every job: {' '.join(o for o in jobs[0].overrides if o in shared)}" if shared else None,
                  caption_justify="left")
    for column in ("job", "overrides", "status", *metrics, "best epoch", "time"):
        # At 80 columns the swept values fold onto more lines rather than being cut.
        table.add_column(column, justify="left" if column in ("overrides", "status") else "right",
                         overflow="fold" if column == "overrides" else "ellipsis", no_wrap=column != "overrides")
    for job in jobs:
        style = STATUS_STYLE.get(job.status, "red")
        table.add_row(str(job_number(job.path)), " ".join(o for o in job.overrides if o not in shared),
                      f"[{style}]{job.status}[/]", *(format_metric(m, job.best(m)) for m in metrics),
                      str(job.record.get("best_epoch") or "-"), f"{job.seconds:.1f}s")
    return table


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs the sweep will run: the product of the swept values' counts (Optuna: n_trials);
    None when it cannot be known beforehand."""
    if "optuna" in str(config.hydra.sweeper.get("_target_", "")):
        return int(config.hydra.sweeper.n_trials)
    try:
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in overrides)
    except Exception:  # noqa: BLE001 - an interval or custom sweep: the count is unknown, not an error
        return None


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class SweepSummary(Callback):
    """Registered in configs/train.yaml under hydra.callbacks: "job k/n" with the sweep's elapsed
    time as each job starts; at the end of a multirun, a table of the jobs sorted by
    early_stopping.monitor, SWEEP_DIR/summary.csv, and the sweep's exit code."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.total: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started, self.total = time.monotonic(), sweep_size(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hc = HydraConfig.get() if HydraConfig.initialized() else None
        if hc is None or hc.mode != RunMode.MULTIRUN or self.started is None:  # a launcher's worker process
            return
        done = hc.job.num  # jobs started before this one (0-based number)
        elapsed = time.monotonic() - self.started
        total = f"/{self.total}" if self.total else ""
        left = f", ~{_duration(elapsed / done * (self.total - done))} left" if done and self.total else ""
        line = f"sweep: job {done + 1}{total}, {_duration(elapsed)} elapsed{left}: {' '.join(hc.overrides.task)}"
        console.print(escape(line), style="bold", soft_wrap=True, highlight=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.config_name != "train":  # `nettrain lr-find -m`: its jobs are not training runs
            return
        sweep_dir = Path(absolute(str(config.hydra.sweep.dir)))
        jobs = sweep_jobs(sweep_dir)
        if not jobs:
            return
        monitor = config.early_stopping.monitor
        jobs = sort_runs(jobs, monitor, config.early_stopping.mode)
        metrics = metric_columns(jobs, always=("val_loss", "val_accuracy", monitor))
        write_summary_csv(sweep_dir / "summary.csv", jobs, metrics)
        failed = [j for j in jobs if j.status not in OK_STATUSES]
        lines = [f"  summary.csv  {sweep_dir / 'summary.csv'}", f"  tensorboard  tensorboard --logdir {sweep_dir}"]
        for job in failed:
            error = str(job.record.get("error") or "it wrote no result").splitlines()[0]
            lines.append(f"  [red]job {job_number(job.path)} {job.status}[/]: {escape(error)}")
        if any(j.status != "diverged" for j in failed):
            lines.append(f"  resume       run the same command with hydra.sweep.dir={sweep_dir} "
                         "(finished jobs are skipped)")
        show(summary_table(jobs, metrics, f"sweep: {len(jobs)} jobs, best {monitor} first"), *lines, stderr=True)
        code = max((exit_code(j.status, recorded=j.record.get("exit_code")) for j in failed), default=0)
        if code:
            raise SystemExit(code)  # the sweep's: the same status -> exit code mapping as a single run
