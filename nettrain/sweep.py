"""Hydra callback for sweeps: a summary of every job when a multirun ends.

The summary is read from the job dirs in the sweep dir (each job's .hydra/overrides.yaml and
metrics.json), not from what the launcher returned: launchers that run jobs in other processes or on
other machines (joblib, SLURM) return nothing useful here, while the files are the same for all of
them, and they include the jobs a resumed sweep skipped. For the same reason the sweep's exit code
is decided here: a job that failed in a worker process cannot set it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.markup import escape

from nettrain.runs import OK_STATUSES, STATUS_STYLE, Run, format_metric, metric_columns, read_run, show, sort_runs


def job_number(job_dir: Path) -> int:
    """The job's number in its sweep (hydra.job.num, the start of its dir name)."""
    head = job_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else -1


def sweep_jobs(sweep_dir: Path) -> list[Run]:
    """The job dirs of a sweep (the dirs Hydra made, `NUM_overrides`), in job order."""
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()] if sweep_dir.is_dir() else []
    return [read_run(d) for d in sorted(dirs, key=lambda d: (job_number(d), d.name))]


def write_summary_csv(path: Path, jobs: list[Run], metrics: list[str]) -> None:
    from nettrain.checkpoint import atomic_write_text

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
    from rich.table import Table

    shared = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
    table = Table(title=title, title_justify="left",
                  caption=f"every job: {' '.join(o for o in jobs[0].overrides if o in shared)}" if shared else None,
                  caption_justify="left")
    for column in ("job", "overrides", "status", *metrics, "best epoch", "time"):
        table.add_column(column, justify="left" if column in ("overrides", "status") else "right")
    for job in jobs:
        style = STATUS_STYLE.get(job.status, "red")
        table.add_row(str(job_number(job.path)), " ".join(o for o in job.overrides if o not in shared),
                      f"[{style}]{job.status}[/]", *(format_metric(m, job.best(m)) for m in metrics),
                      str(job.record.get("best_epoch") or "-"), f"{job.seconds:.1f}s")
    return table


class SweepSummary(Callback):
    """Registered in configs/train.yaml under hydra.callbacks: at the end of a multirun, a table of
    the jobs sorted by early_stopping.monitor, SWEEP_DIR/summary.csv, and the sweep's exit code."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nettrain import app
        from nettrain.config import absolute

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
        for job in failed:
            app._set_exit(job.status)  # the same status -> exit code mapping as a single run
