"""`nettrain train`: a Hydra app over configs/train.yaml that trains one job, or a sweep's jobs (`-m`).

Each job: take its run dir (a lock: one process per dir), validate the config (torch is imported only once
a checkpoint is read or the job is launched, so config errors answer at once),
decide whether it is a new run, a resume or a sweep job already done, then launch it (training.launch) and
map how it ended to an exit code. A refused job writes nothing into the dir it names.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nettrain.commands.hydra_app import hydra_context, run_hydra_app
from nettrain.config.overrides import check_added_keys
from nettrain.config.paths import absolute, absolute_paths
from nettrain.config.registry import names_or_paths
from nettrain.config.rules import monitor_mode, validate
from nettrain.errors import UserError, invalid, os_error_line
from nettrain.records import rundir
from nettrain.records.runs import FINISHED, latest_resumable, read_metrics, record_status
from nettrain.training.launch import as_torchrun_rank, cluster, launch

log = logging.getLogger("nettrain")

# Exit codes by final status (an interrupted run: 128 + the signal).
EXIT_CODES = {"completed": 0, "stopped_early": 0, "skipped": 0, "diverged": 1, "failed": 1}


def main(argv: list[str]) -> int:
    code = as_torchrun_rank(argv)  # under torchrun, ranks > 0 train the job rank 0 composes
    if code is not None:
        return code
    try:
        argv = with_resume_dir(argv)
    except UserError as e:
        print(f"nettrain: {e}", file=sys.stderr)
        return e.exit_code
    return run_hydra_app(train_task, argv)


def with_resume_dir(argv: list[str]) -> list[str]:
    """`resume=PATH` continues in that run's own dir, and leaves its saved Hydra config untouched.
    `resume=last` (or `latest`) is the newest resumable run under outputs/. A path without a checkpoint is
    refused here, before Hydra touches it: nothing is written to it."""
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume in ("last", "latest"):
        resume = str(latest_resumable(Path("outputs")))
        argv = [f"resume={resume}" if a.startswith("resume=") else a for a in argv]
    if not resume or "-m" in argv or "--multirun" in argv or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    if not Path(absolute(resume)).exists():
        raise invalid("resume", resume, "no such file or directory (expected a run dir or checkpoint)")
    from nettrain.records.checkpoint import find_checkpoint  # torch: only for a resume

    path = find_checkpoint(absolute(resume), prefer="last.pt")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return [*argv, f"hydra.run.dir={run_dir}"]


def train_task(cfg: DictConfig) -> float:
    """One training job. Returns the best monitored value (what Hydra's sweepers optimize); a single run that
    does not end well raises SystemExit with its exit code."""
    run_dir, multirun, overrides = hydra_context()
    composed = copy.deepcopy(cfg)  # as Hydra composed it, for .hydra/config.yaml
    started = False
    try:
        if _single_entry():
            rundir.lock(run_dir)  # before reading anything: a second process on this dir stops here
        rundir.check_writable(run_dir)  # a read-only or full disk is one line now, not a failure mid-run
        if multirun:  # a sweep's job dir is the sweep's: its summary lists every job, refused ones too
            rundir.record_hydra_config(run_dir, composed)
        cfg, ckpt, done = _accept(cfg, run_dir, multirun, overrides)
        if done is not None:
            return _objective(done, cfg)
        if ckpt is None and not multirun:
            rundir.record_hydra_config(run_dir, composed)  # a resumed run keeps its own record
        started = True
        result = launch(cfg, run_dir, ckpt)
    except (UserError, OSError) as e:
        return _refused(e, cfg, run_dir, multirun, started)
    except Exception as e:  # a bug or a crash (out of memory, ...): record it, then show it in full
        record_status(run_dir, "failed", f"{type(e).__name__}: {e}", exit_code=1)
        if not multirun:
            raise
        log.error("job failed:\n%s", traceback.format_exc())
        return _worst(cfg)
    except (KeyboardInterrupt, SystemExit) as e:
        _interrupted(run_dir, started)
        if isinstance(e, KeyboardInterrupt):
            # One landing after the loop gave Python back its handler (while the run closes its records):
            # the same exit 130 as one caught in the loop, not a traceback.
            raise SystemExit(130) from None
        raise
    finally:
        rundir.unlock(run_dir)
    return _ended(result, cfg, run_dir, multirun)


def _accept(cfg: DictConfig, run_dir: Path, multirun: bool,
            overrides: list[str]) -> tuple[DictConfig, dict[str, Any] | None, dict[str, Any] | None]:
    """(the config to train, the checkpoint to continue or None, the record of a sweep job already done or
    None): the config checked, a resume's config taken from its checkpoint, a re-run sweep's job skipped when
    it finished and continued when it was interrupted."""
    previous = read_metrics(run_dir)
    validate(cfg)
    check_added_keys(cfg, overrides)
    absolute_paths(cfg, names_or_paths(cfg))
    if cfg.resume:
        from nettrain.training.resume import resumed_config  # torch: a checkpoint is read

        saved, ckpt = resumed_config(cfg, overrides)
        return saved, ckpt, None
    last = run_dir / "checkpoints" / "last.pt"
    if previous is None and not (multirun and last.is_file()):
        return cfg, None, None
    if not multirun:
        raise UserError(f"{run_dir} already holds a run (status {previous.get('status')}); "
                        f"continue it with resume={run_dir} or choose another hydra.run.dir")
    # Re-running a sweep in the same hydra.sweep.dir: finished jobs are kept as they are, interrupted ones
    # continue from their last checkpoint (a job killed between writing last.pt and metrics.json has only that).
    if (previous or {}).get("status") in FINISHED:
        log.info("%s: already %s, skipped", run_dir.name, previous["status"])
        return cfg, None, previous
    if not last.is_file():
        return cfg, None, None
    from nettrain.records.checkpoint import load_checkpoint  # torch: a checkpoint is read

    return cfg, load_checkpoint(last), None


def _refused(e: UserError | OSError, cfg: DictConfig, run_dir: Path, multirun: bool, started: bool) -> float:
    """A job stopped by a bad input or a disk: one line; a single run exits, a sweep's job is recorded."""
    message = str(e) if isinstance(e, UserError) else os_error_line(e)
    code = e.exit_code if isinstance(e, UserError) else 1
    if started or multirun:
        log.error("nettrain: %s", message)  # into the run's train.log too
    else:  # a refused command writes nothing into the dir it names, not even its log
        print(f"nettrain: {message}", file=sys.stderr)
    if not isinstance(e, rundir.RunDirRefused):
        # A run that never wrote anything leaves no dir behind; one that did (or a sweep's job) keeps it
        # with the error. A refused resume leaves the run it names untouched.
        if multirun or (not rundir.discard_new(run_dir) and started):
            record_status(run_dir, "failed", message, exit_code=code)
    if not multirun:
        raise SystemExit(code) from None
    return _worst(cfg)


def _interrupted(run_dir: Path, started: bool) -> None:
    """A second Ctrl-C quits mid-step: last.pt (written atomically) still holds the last save."""
    if started and (run_dir / "checkpoints" / "last.pt").is_file():
        record_status(run_dir, "interrupted", "interrupted (second Ctrl-C)", resume_command=f"nettrain train resume={run_dir}")
    elif started:
        record_status(run_dir, "failed", "interrupted before the first checkpoint")


def _ended(result: dict[str, Any], cfg: DictConfig, run_dir: Path, multirun: bool) -> float:
    """How a launched job ended, as an exit code (a single run) or a sweeper's objective (a sweep's job)."""
    status = result["status"]
    if status == "diverged":
        log.error("nettrain: %s", result["error"])
    code = exit_code(status, result.get("signal"))
    if status == "interrupted":
        if multirun:  # Ctrl-C stops the whole sweep; the same command resumes it
            log.warning("sweep interrupted: run the same command with hydra.sweep.dir=%s to resume it", run_dir.parent)
        raise SystemExit(code)
    if code and not multirun:
        raise SystemExit(code)
    return _objective(result, cfg)


def exit_code(status: str, signum: int | None = None, recorded: int | None = None) -> int:
    """A run's exit code: by its status, 128 + the signal for an interrupted one, or the one it recorded."""
    if recorded is not None:
        return recorded
    return 128 + signum if status == "interrupted" and signum else EXIT_CODES.get(status, 1)


def _objective(result: dict[str, Any], cfg: DictConfig) -> float:
    """The best value of the monitored metric, as a minimization/maximization target for sweepers."""
    value = result["best_value"] if "best_value" in result else (result.get("best") or {}).get(cfg.early_stopping.monitor)
    return float(value) if value is not None else _worst(cfg)


def _worst(cfg: DictConfig) -> float:
    """A failed job's objective: the worst possible value (Optuna refuses NaN, and learns to avoid this)."""
    es = cfg.get("early_stopping") or {}
    return -math.inf if monitor_mode(es.get("monitor", "val_loss"), es.get("mode", "auto")) == "max" else math.inf


def _single_entry() -> bool:
    """Whether this process alone runs the job's Hydra app: not so for a multi-node SLURM step, whose task on
    every node composes the same job into the same (shared) run dir, all of them joining one data-parallel
    job; the scheduler, not a lock, keeps another job out of it."""
    return cluster(os.environ)[0] == 1
