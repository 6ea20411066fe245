"""Start training: in this process, or as a data-parallel (DDP) job of `trainer.devices` worker
processes per node.

Hydra composes the config and makes the run dir first, in one process; only then are the workers
started, by torch's elastic launcher (the engine of `torchrun`), so a job has one run dir however
many ranks it has. Under an outside `torchrun` every process runs `nettrain train`: rank 0
composes the job and makes the run dir, and the other ranks train the job rank 0 sends them
(`as_torchrun_rank`) instead of composing their own. A SLURM step with one task per node (the
`slurm_ddp` launcher config) starts `trainer.devices` workers in each node's task, all joined in
one rendezvous on the step's first node.

Only heavy-free imports at the top: `as_torchrun_rank` runs before any config is composed, and the process that
launches DDP workers never trains itself; torch and the loop are imported where a process starts to train.
"""

from __future__ import annotations

import gc
import json
import logging
import logging.config
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nettrain.errors import UserError, invalid
from nettrain.records.console import console_handler

log = logging.getLogger("nettrain")

# Hydra flags that print something instead of running a job.
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")


class WorkerError(RuntimeError):
    """A worker process failed: the message names its rank and error (its traceback is logged)."""


def launch(cfg: DictConfig, run_dir: Path, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` and return rank 0's result (see `nettrain.training.loop.fit`; from
    worker processes it comes without the `model`)."""
    job = {"config": OmegaConf.to_container(cfg, resolve=True), "run_dir": str(run_dir),
           "ckpt": ckpt["path"] if ckpt is not None else None}
    rank, world_size = torchrun_rank()
    if world_size > 1:
        if cfg.trainer.devices != 1:
            raise invalid("trainer.devices", cfg.trainer.devices, "under torchrun the processes are torchrun's "
                          "(--nproc_per_node); leave trainer.devices=1")
        from nettrain.training import distributed  # torch: this process trains

        with distributed.process_group():
            distributed.broadcast_object(job)  # to the other ranks, waiting in `as_torchrun_rank`
            return _train(job)
    nodes, endpoint, run_id = cluster(os.environ)
    if cfg.trainer.devices == 1 and nodes == 1:
        from nettrain.training.loop import fit  # torch: this process trains

        return fit(cfg, run_dir, ckpt)
    _check_devices(cfg.trainer)
    return _launch_workers(job, run_dir, cfg.trainer.devices, nodes, endpoint, run_id)


def torchrun_rank(env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(rank, world size) of this process when an outside launcher (torchrun) started it as one
    rank of a job; (0, 1) otherwise."""
    if "LOCAL_RANK" not in env or "WORLD_SIZE" not in env:
        return 0, 1
    return int(env.get("RANK", 0)), int(env["WORLD_SIZE"])


def as_torchrun_rank(argv: list[str]) -> int | None:
    """Under torchrun every rank runs `nettrain train ARGV`. Returns None where this process goes
    on to run the Hydra app as usual (no torchrun, or rank 0), else the exit code of a rank > 0,
    which trains the job rank 0 composed (one config, one run dir, and only rank 0 prints)."""
    rank, world_size = torchrun_rank()
    if world_size == 1:
        return None
    if "-m" in argv or "--multirun" in argv:
        if rank == 0:
            print("nettrain: -m/--multirun under torchrun is not supported: torchrun runs one training job; "
                  "sweep with `nettrain train -m ... trainer.devices=N` instead", file=sys.stderr)
        return 2
    if rank == 0:
        return None
    if any(a in INFO_FLAGS for a in argv):
        return 0  # rank 0 prints it
    from nettrain.training import distributed  # torch: this process trains

    _configure_logging(rank, None)
    try:
        with distributed.process_group():
            _train(distributed.broadcast_object())
    except UserError as e:  # rank 0 meets the same error and prints it
        return e.exit_code
    return 0


def cluster(env: Mapping[str, str]) -> tuple[int, str, str]:
    """(nodes, rendezvous endpoint, run id) of the job this process starts workers for: this
    machine alone, unless it is one task per node of a multi-node SLURM step (the `slurm_ddp`
    launcher), whose tasks all meet on the step's first node."""
    nodes = int(env.get("SLURM_STEP_NUM_NODES", 1))
    if nodes == 1:
        return 1, "localhost:0", f"nettrain-{os.getpid()}"  # port 0: the launcher picks a free one
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", 0))
    if tasks != nodes:
        raise UserError(f"this SLURM step runs {tasks} tasks on {nodes} nodes; nettrain needs one task per node "
                        f"(tasks_per_node=1, as hydra/launcher=slurm_ddp sets) and starts trainer.devices "
                        f"workers in each")
    job_id = env["SLURM_JOB_ID"]
    port = 29500 + int(job_id) % 1000  # the same on every node, and apart from other jobs' on the host
    return nodes, f"{first_host(env['SLURM_STEP_NODELIST'])}:{port}", f"slurm-{job_id}-{env.get('SLURM_STEP_ID', 0)}"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[07-09,12],cpu1` -> `gpu07`."""
    m = re.match(r"([^,\[]+)(?:\[([^\]\-,]+))?", nodelist)
    if m is None:
        raise UserError(f"cannot read the SLURM node list {nodelist!r}")
    return m.group(1) + (m.group(2) or "")


def _check_devices(trainer: DictConfig) -> None:
    """One GPU per worker: fail here, in one line, rather than in every worker."""
    import torch  # (and runtime's): to count the GPUs

    from nettrain.runtime import resolve_device

    device = resolve_device(trainer.device)
    if device.type != "cuda":
        return
    if device.index is not None:
        raise invalid("trainer.device", trainer.device, "with trainer.devices > 1 worker r uses GPU r; "
                      "use trainer.device=cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    if trainer.devices > torch.cuda.device_count():
        raise invalid("trainer.devices", trainer.devices, f"this machine has {torch.cuda.device_count()} GPU(s)")


def _launch_workers(job: dict[str, Any], run_dir: Path, devices: int, nodes: int, endpoint: str,
                    run_id: str) -> dict[str, Any]:
    # torch's elastic launcher: only a multi-process job needs it
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    log.info("data-parallel: %d worker process(es) x %d node(s), global batch %d", devices, nodes,
             job["config"]["data"]["batch_size"] * devices * nodes)
    with tempfile.TemporaryDirectory(prefix="nettrain-") as tmp:
        user_error = Path(tmp) / "user_error.json"
        config = LaunchConfig(min_nodes=nodes, max_nodes=nodes, nproc_per_node=devices, run_id=run_id,
                              rdzv_backend="c10d", rdzv_endpoint=endpoint, max_restarts=0,
                              logs_specs=DefaultLogsSpecs(log_dir=str(Path(tmp) / "logs")))
        try:
            with _quiet_launcher_logs(), _kept_signal_handlers():
                results = elastic_launch(config, _worker)(job, _logging_config(), str(user_error))
        except ChildFailedError as e:
            if user_error.is_file():
                error = json.loads(user_error.read_text())
                raise _user_error(error["message"], error["exit_code"]) from None
            rank, failure = e.get_first_failure()
            if failure.exitcode in INTERRUPTED_EXIT and _recorded(run_dir).get("status") == "interrupted":
                return {**_recorded(run_dir), "status": "interrupted", "signal": failure.exitcode - 128}
            if isinstance(failure.message, str):  # no traceback: killed by a signal (out of memory, ...)
                message = failure.message
            else:
                message = failure.message.get("message", "")
                log.error("rank %d failed:\n%s", rank, failure.message.get("extraInfo", {}).get("py_callstack", ""))
            raise WorkerError(f"rank {rank} failed (exit code {failure.exitcode}): {message}") from None
        except SignalException as e:
            # The launcher passed the signal on and waited for the workers to stop and save a
            # checkpoint; rank 0's metrics.json says how the run ended.
            return {"status": "interrupted", **_recorded(run_dir), "signal": int(e.sigval)}
    return results[min(results)]


# The exit codes of a worker that stopped on SIGINT or SIGTERM after saving (128 + the signal).
INTERRUPTED_EXIT = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def _recorded(run_dir: Path) -> dict[str, Any]:
    """Rank 0's metrics.json: how the run ended, whatever became of its processes."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """torch's launcher logs each worker failure with a traceback in its own format; nettrain reports
    failures itself (a user error in one line), so the launcher's loggers are quiet meanwhile."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(("torch.distributed.elastic", "torch.multiprocessing"))]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def _kept_signal_handlers() -> Iterator[None]:
    """The launcher installs its own handlers (to pass signals on to the workers); put the previous
    ones back afterwards, for whatever this process runs next (a sweep's next job, a test)."""
    if threading.current_thread() is not threading.main_thread():  # no handlers there (nor the launcher's)
        yield
        return
    signums = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    handlers = [signal.getsignal(s) for s in signums]
    try:
        yield
    finally:
        for signum, handler in zip(signums, handlers):
            if handler is not None:
                signal.signal(signum, handler)


def _user_error(message: str, exit_code: int) -> UserError:
    error = UserError(message)
    error.exit_code = exit_code
    return error


def _worker(job: dict[str, Any], logging_config: dict[str, Any] | None, user_error: str) -> dict[str, Any]:
    """One rank of a job started by `_launch_workers` (RANK, WORLD_SIZE, MASTER_ADDR/PORT are set)."""
    # Like torchrun's workers, in a process group of their own: a Ctrl-C at the terminal reaches
    # the launcher, which passes it on once (a second one would mean "quit now, without saving").
    os.setpgrp()
    rank = int(os.environ["RANK"])
    _configure_logging(rank, logging_config)
    _test_failure_hook(rank)
    from nettrain.training import distributed  # torch: this process trains

    try:
        with distributed.process_group():
            result = _train(job)
    except UserError as e:
        # Exit non-zero so the launcher stops the other ranks; the launching process shows the
        # message in one line (the first rank to fail writes it).
        try:
            with open(user_error, "x") as f:
                json.dump({"message": str(e), "exit_code": e.exit_code}, f)
        except FileExistsError:
            pass
        raise SystemExit(e.exit_code) from None
    if result["status"] == "interrupted":
        # Saved and stopped: exit now. A worker that returns waits for the launcher to collect its result,
        # and a launcher that was signalled itself never does: it would kill the worker only 30 s later.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + (result.get("signal") or signal.SIGINT))
    gc.freeze()  # a quick exit, as the launcher's own (cli.main)
    return result


def _train(job: dict[str, Any]) -> dict[str, Any]:
    from nettrain.records.checkpoint import load_checkpoint  # torch: this process trains
    from nettrain.training.loop import fit

    ckpt = load_checkpoint(job["ckpt"]) if job["ckpt"] else None
    result = fit(OmegaConf.create(job["config"]), Path(job["run_dir"]), ckpt)
    result.pop("model", None)  # rank 0's weights are in its checkpoints
    return result


def _logging_config() -> dict[str, Any] | None:
    """The Hydra app's logging (console, and the run's train.log) for rank 0's process to reuse."""
    if not HydraConfig.initialized():
        return None
    return OmegaConf.to_container(HydraConfig.get().job_logging, resolve=True)


def _configure_logging(rank: int, config: dict[str, Any] | None) -> None:
    """Rank 0 logs as the Hydra app does; the other ranks show only errors."""
    if rank == 0 and config:
        logging.config.dictConfig(config)
        return

    root = logging.getLogger()
    root.handlers[:] = [console_handler()]
    root.setLevel(logging.INFO if rank == 0 else logging.ERROR)


def _test_failure_hook(rank: int) -> None:
    """For tests only: NETTRAIN_TEST_FAIL_RANK=R makes rank R raise in its first forward pass, so a
    test can check that one failing worker brings the whole job down."""
    if os.environ.get("NETTRAIN_TEST_FAIL_RANK") != str(rank):
        return
    import torch  # the worker trains: torch is loaded already

    def fail(module: Any, args: Any) -> None:
        raise RuntimeError(f"NETTRAIN_TEST_FAIL_RANK={rank}: rank {rank} fails on purpose")

    torch.nn.modules.module.register_module_forward_pre_hook(fail)
