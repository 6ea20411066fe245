"""The Hydra apps (`train`, `lr-find`, `check-data`), all composed from configs/train.yaml.

Hydra composes the config and makes the run dir; these task functions validate the config
(without importing torch), decide whether the run is new, resumed or already done, and map the
outcome to an exit code. Torch is imported only once there is work to do.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from nettrain.config import (
    absolute,
    absolute_paths,
    check_added_keys,
    check_targets,
    monitor_mode,
    note_swept_keys,
    register_resolvers,
    validate,
)
from nettrain.errors import UserError, invalid, os_error_line
from nettrain.overrides import quote_paths
from nettrain.suggest import explain, nearest

log = logging.getLogger("nettrain")

# Exit codes by final status; set by the task, returned by `run_hydra_app`.
EXIT_CODES = {"completed": 0, "stopped_early": 0, "skipped": 0, "diverged": 1, "failed": 1}
_outcome: dict[str, int] = {"exit": 0}

# Keys a resumed run may change: they extend or steer the run without changing what it computes.
RESUMABLE_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.log_every_n_steps", "trainer.device", "trainer.threads",
                  "trainer.compile", "data.num_workers", "early_stopping.patience", "early_stopping.min_delta",
                  "checkpoint.save_top_k", "trainer.checkpoint_every_n_steps")


def run_hydra_app(task: Callable[[DictConfig], Any], argv: list[str], config_name: str = "train") -> int:
    """Run `task` as a Hydra app on `argv` (overrides and Hydra flags) and return the exit code."""
    import hydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    if any(a in ("-h", "--help") for a in argv):
        return _print_help(config_name, argv)
    try:
        argv = quote_paths(_with_resume_dir(argv))
    except UserError as e:
        print(f"nettrain: {e}", file=sys.stderr)
        return 2
    if "-m" in argv or "--multirun" in argv:
        note_swept_keys(argv)
    # Composition errors reach us as exceptions, so they can be reported in one line with exit 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = ["nettrain", *argv]
    _outcome["exit"] = 0
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # a second app in one process (tests, lr-find then train) starts clean
    app = hydra.main(config_path="pkg://nettrain.configs", config_name=config_name, version_base="1.3")(task)
    try:
        app()
    except MissingConfigException as e:
        print(f"nettrain: {_missing_config_line(e)}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:
        print(f"nettrain: {explain(e) or _first_line(e)}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:  # a config file (--config-dir, +experiment=) that is not valid YAML
        print(f"nettrain: {yaml_error_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        if not str(e).startswith("Only one of --run"):  # Hydra's check of its mode flags (-m with --cfg, ...)
            raise
        print(f"nettrain: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # Hydra could not make the run dir (read-only, a file in the way, full disk)
        print(f"nettrain: {os_error_line(e)}", file=sys.stderr)
        return 1
    return _outcome["exit"]


def _print_help(config_name: str, argv: list[str]) -> int:
    """`--help`: train's explains every key its overrides compose; lr-find's and check-data's their own keys."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from nettrain.help import hydra_app_help, own_keys_help

    if config_name != "train":
        print(own_keys_help(config_name), end="")
        return 0
    overrides = [a for a in argv if a not in ("-h", "--help") and "=" in a and not a.startswith("-")]
    try:
        print(hydra_app_help(config_name, quote_paths(overrides)), end="")
    except MissingConfigException as e:
        print(f"nettrain: {_missing_config_line(e)}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:
        print(f"nettrain: {explain(e) or _first_line(e)}", file=sys.stderr)
        return 2
    return 0


def yaml_error_line(e: yaml.YAMLError) -> str:
    """'FILE, line L, column C: what' for a YAML file that does not parse (PyYAML says it in 4 to 6 lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or _first_line(e)
    if mark is None:
        return f"invalid YAML: {problem}"
    context, begun = getattr(e, "context", None), getattr(e, "context_mark", None)
    started = f" ({context}{f' begun on line {begun.line + 1}' if begun is not None else ''})" if context else ""
    return f"invalid YAML in {mark.name}, line {mark.line + 1}, column {mark.column + 1}: {problem}{started}"


def _first_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:2] if line.strip())
    return text or type(e).__name__


# Configs that Hydra plugins provide -> (the plugin's package, the nettrain extra that installs it).
PLUGIN_CONFIGS = {
    "hydra/sweeper/optuna": ("hydra-optuna-sweeper", "sweep"),
    "hydra/launcher/joblib": ("hydra-joblib-launcher", "sweep"),
    "hydra/launcher/submitit_slurm": ("hydra-submitit-launcher", "slurm"),
    "hydra/launcher/submitit_local": ("hydra-submitit-launcher", "slurm"),
}


def _missing_config_line(e: Any) -> str:
    """'model=foo' -> "unknown model=foo; allowed: cnn, mlp, ..." (Hydra lists them on many lines)."""
    missing = getattr(e, "missing_cfg_file", "") or ""
    options = getattr(e, "options", None)
    if missing in PLUGIN_CONFIGS:
        package, extra = PLUGIN_CONFIGS[missing]
        group, name = missing.rsplit("/", 1)
        return (f"{group}={name} needs the Hydra plugin {package}, which is not installed: "
                f"pip install {package}  (or pip install 'nettrain[{extra}]')")
    if "/" in missing and options:
        group, name = missing.rsplit("/", 1)
        guess = nearest(name, sorted(options))
        return f"unknown {group}={name};{f' did you mean {guess}?' if guess else ''} allowed: {', '.join(sorted(options))}"
    return explain(e) or _first_line(e)


def _with_resume_dir(argv: list[str]) -> list[str]:
    """`resume=PATH` continues in that run's own dir, and leaves its saved Hydra config untouched.
    `resume=last` (or `latest`) is the newest resumable run under outputs/."""
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume in ("last", "latest"):
        from nettrain.runs import latest_resumable

        resume = str(latest_resumable(Path("outputs")))
        argv = [f"resume={resume}" if a.startswith("resume=") else a for a in argv]
    if not resume or "-m" in argv or "--multirun" in argv or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    if not Path(absolute(resume)).exists():
        raise invalid("resume", resume, "no such file or directory (expected a run dir or checkpoint)")
    from nettrain.checkpoint import find_checkpoint

    # Before Hydra touches the dir: a path without a checkpoint is refused with nothing written to it.
    path = find_checkpoint(absolute(resume), prefer="last.pt")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return [*argv, f"hydra.run.dir={run_dir}"]


def train_main(argv: list[str]) -> int:
    from nettrain.launch import as_torchrun_rank

    # Under torchrun, ranks > 0 train the job rank 0 composes (one config, one run dir).
    code = as_torchrun_rank(argv)
    return run_hydra_app(train_task, argv) if code is None else code


def lr_find_main(argv: list[str]) -> int:
    from nettrain.lr_find import lr_find_task

    return run_hydra_app(lr_find_task, argv, config_name="lr_find")


def check_data_main(argv: list[str]) -> int:
    from nettrain.check_data import check_data_task

    return run_hydra_app(check_data_task, argv, config_name="check_data")


def _hydra_context() -> tuple[Path, bool, list[str]]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN, list(hc.overrides.task)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def train_task(cfg: DictConfig) -> float:
    """One training job. Returns the best monitored value (what Hydra's sweepers optimize)."""
    from nettrain import rundir

    run_dir, multirun, overrides = _hydra_context()
    composed = copy.deepcopy(cfg)  # as Hydra composed it, for .hydra/config.yaml
    previous, started = None, False
    try:
        if _single_entry():
            rundir.lock(run_dir)  # before reading anything: a second process on this dir stops here
        rundir.check_writable(run_dir)  # a read-only or full disk is one line now, not a failure mid-run
        if multirun:  # a sweep's job dir is the sweep's: its summary lists every job, refused ones too
            rundir.record_hydra_config(run_dir, composed)
        previous = read_metrics(run_dir)
        validate(cfg)
        check_added_keys(cfg, overrides)
        absolute_paths(cfg)
        ckpt = None
        if cfg.resume:
            cfg, ckpt = _resume(cfg, overrides)
        elif previous is not None or (multirun and (run_dir / "checkpoints" / "last.pt").is_file()):
            if not multirun:
                raise UserError(f"{run_dir} already holds a run (status {previous.get('status')}); "
                                f"continue it with resume={run_dir} or choose another hydra.run.dir")
            # Re-running a sweep in the same hydra.sweep.dir: finished jobs are kept as they are,
            # interrupted ones continue from their last checkpoint (a job killed between writing
            # last.pt and metrics.json has only the checkpoint).
            if (previous or {}).get("status") in ("completed", "stopped_early", "diverged"):
                log.info("%s: already %s, skipped", run_dir.name, previous["status"])
                _set_exit(previous["status"])
                return _objective(previous, cfg)
            if (run_dir / "checkpoints" / "last.pt").is_file():
                from nettrain.checkpoint import load_checkpoint

                ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        if ckpt is None and not multirun:
            rundir.record_hydra_config(run_dir, composed)  # a resumed run keeps its own record
        from nettrain.launch import launch

        started = True
        result = launch(cfg, run_dir, ckpt)
    except (UserError, OSError) as e:
        message = str(e) if isinstance(e, UserError) else os_error_line(e)
        code = e.exit_code if isinstance(e, UserError) else 1
        if started or multirun:
            log.error("nettrain: %s", message)  # into the run's train.log too
        else:  # a refused command writes nothing into the dir it names, not even its log
            print(f"nettrain: {message}", file=sys.stderr)
        if not isinstance(e, rundir.RunDirRefused):
            # A run that never wrote anything leaves no dir behind; one that did (or a sweep's job)
            # keeps it with the error. A refused resume leaves the run it names untouched.
            if multirun or (not rundir.discard_new(run_dir) and started):
                _record_failure(run_dir, message)
        _outcome["exit"] = max(_outcome["exit"], code)
        if not multirun:
            raise SystemExit(code) from None
        return _worst(cfg)
    except Exception as e:  # a bug or a crash (out of memory, ...): record it, then show it in full
        _record_failure(run_dir, f"{type(e).__name__}: {e}")
        if not multirun:
            raise
        log.error("job failed:\n%s", traceback.format_exc())
        _outcome["exit"] = 1
        return _worst(cfg)
    except (KeyboardInterrupt, SystemExit) as e:
        # A second Ctrl-C quits mid-step: last.pt (written atomically) still holds the last save.
        if started and (run_dir / "checkpoints" / "last.pt").is_file():
            _record_failure(run_dir, "interrupted (second Ctrl-C)", status="interrupted",
                            resume_command=f"nettrain train resume={run_dir}")
        elif started:
            _record_failure(run_dir, "interrupted before the first checkpoint")
        if isinstance(e, KeyboardInterrupt):
            # One landing after the loop gave Python back its handler (while the run closes its records):
            # the same exit 130 as one caught in the loop, not a traceback.
            raise SystemExit(130) from None
        raise
    finally:
        rundir.unlock(run_dir)
    status = result["status"]
    if status == "diverged":
        log.error("nettrain: %s", result["error"])
    _set_exit(status, result.get("signal"))
    if status == "interrupted":
        if multirun:  # Ctrl-C stops the whole sweep; the same command resumes it
            log.warning("sweep interrupted: run the same command with hydra.sweep.dir=%s to resume it",
                        run_dir.parent)
        raise SystemExit(_outcome["exit"])
    return _objective(result, cfg)


def _set_exit(status: str, signum: int | None = None) -> None:
    code = 128 + signum if status == "interrupted" and signum else EXIT_CODES.get(status, 1)
    _outcome["exit"] = max(_outcome["exit"], code)


def _objective(result: dict[str, Any], cfg: DictConfig) -> float:
    """The best value of the monitored metric, as a minimization/maximization target for sweepers."""
    if "best_value" in result:
        value = result["best_value"]
    else:
        value = (result.get("best") or {}).get(cfg.early_stopping.monitor)
    return float(value) if value is not None else _worst(cfg)


def _worst(cfg: DictConfig) -> float:
    """A failed job's objective: the worst possible value (Optuna refuses NaN, and learns to avoid this)."""
    es = cfg.get("early_stopping") or {}
    return -math.inf if monitor_mode(es.get("monitor", "val_loss"), es.get("mode", "auto")) == "max" else math.inf


def _resume(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The checkpoint's own config, changed only by overrides that keep the run the same run."""
    from nettrain.checkpoint import load_checkpoint
    from nettrain.inference import run_dir_of

    ckpt = load_checkpoint(absolute(cfg.resume), prefer="last.pt")
    # The user's own model, data or loss code is imported only when this command names it too;
    # any other `_target_` must be one nettrain ships or this command's config names.
    from nettrain.targets import GROUPS, confirm

    confirm(ckpt["config"], cfg, GROUPS, ckpt["path"], "give its config again (--config-dir DIR model=NAME, or +{key}={target})")
    check_targets(ckpt["config"], cfg, ckpt["path"])
    saved = OmegaConf.create(ckpt["config"])
    if "decay_norms_and_biases" not in saved.optimizer:
        # Saved before biases and norms were spared weight decay: the run goes on decaying them, as
        # it began (its optimizer state has one group per learning rate, not two).
        saved.optimizer.decay_norms_and_biases = True
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if (key == "resume" or key.startswith("hydra.") or _names_a_target(key, ckpt["config"])
                or _same(OmegaConf.select(cfg, key), OmegaConf.select(saved, key))):
            continue
        if key not in RESUMABLE_KEYS:
            raise UserError(f"cannot change {key} when resuming: it would change the run being continued "
                            f"(allowed with resume: {', '.join(RESUMABLE_KEYS)}); start a new run instead")
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
    saved.resume = str(ckpt["path"])
    validate(saved)
    finished = (read_metrics(run_dir_of(Path(ckpt["path"]))) or {}).get("status") in ("completed", "stopped_early", "diverged")
    epoch, step = ckpt["progress"]["epoch"], ckpt["progress"]["step"]
    if epoch and not ckpt["progress"]["batch"] and finished:
        # (a run killed after its last epoch's checkpoint, still "running", resumes to close its records)
        from nettrain.train import planned_epochs

        planned, limits = planned_epochs(saved.trainer, step / epoch)  # whole epochs of step / epoch steps each
        if epoch >= planned:
            raise UserError(f"{ckpt['path']} already finished {epoch} epochs of "
                            f"{' and '.join(f'{k}={OmegaConf.select(saved, k)}' for k in limits)}; "
                            f"pass a larger {' and '.join(limits)} to train on")
    return saved, ckpt


def _single_entry() -> bool:
    """Whether this process alone runs the job's Hydra app: not so for a multi-node SLURM step, whose
    task on every node composes the same job into the same (shared) run dir, all of them joining one
    data-parallel job; the scheduler, not a lock, keeps another job out of it."""
    from nettrain.launch import cluster

    return cluster(os.environ)[0] == 1


def _same(given: Any, saved: Any) -> bool:
    """An override that restates the run's own value (e.g. the model config that names the user's
    own `_target_`) changes nothing."""
    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    return given is not None and plain(given) == plain(saved)


def _names_a_target(key: str, saved: dict[str, Any]) -> bool:
    """An override that only names the user's code again (`model=mine`, `+model._target_=...`) for a
    run that was trained with it: `confirm` has checked it names the same `_target_`; the run goes on
    with its own config."""
    group = key.split(".", 1)[0]
    return (key == group or key == f"{group}._target_") and "_target_" in (saved.get(group) or {})


def _record_failure(run_dir: Path, error: str, status: str = "failed", **fields: Any) -> None:
    """A failed job keeps its dir with the status and the error, so a sweep summary lists it. The
    record is the latest on disk: every epoch already recorded is kept."""
    from nettrain.checkpoint import atomic_write_text

    record = (read_metrics(run_dir) or {}) | {"status": status, "error": error, **fields}
    record.setdefault("history", [])
    try:
        atomic_write_text(run_dir / "metrics.json", json.dumps(record, indent=2, default=str) + "\n")
    except UserError:
        pass  # the disk refuses writes: the last complete metrics.json stays
