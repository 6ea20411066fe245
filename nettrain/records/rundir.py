"""A run dir belongs to one run.

While a process trains in a dir it holds a kernel lock on it (`flock`, released by the kernel when
the process dies, however it dies), so a second `train` or `resume` on the same dir is refused in
one line naming the first process. Hydra's record of a run (`.hydra/`) is written by the run
itself, once its command was accepted: a refused command leaves an existing run dir as it was.

A refused command also leaves no new dir behind, and removes no dir it did not make: `RunDirGuard`
notes, before Hydra makes a run's dir, which of its dirs do not exist yet, and `discard_new` removes
only those.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nettrain.errors import UserError


class RunDirRefused(UserError):
    """This process cannot train in the run dir: nothing may be written to it, not even the failure."""

    exit_code = 1


class RunDirBusy(RunDirRefused):
    """Another live process trains in this run dir."""


_held: dict[str, int] = {}  # run dir -> the descriptor holding its lock
_made: dict[Path, list[Path]] = {}  # run dir -> the dirs Hydra makes for it (it and its missing parents, deepest first)
# What Hydra puts in a run dir before the run writes anything: nothing else marks it as a run's.
HYDRA_FILES = (".hydra", "train.log")


class RunDirGuard(Callback):
    """Registered in configs/train.yaml under hydra.callbacks: before Hydra makes a single run's dir,
    note which of the dirs on its path do not exist yet (only those are this process's to remove)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        missing, d = [], run_dir
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        _made[run_dir] = missing


def discard_new(run_dir: Path) -> bool:
    """Remove `run_dir` when this process made it (`RunDirGuard`) and it holds only Hydra's own files,
    with the parents made for it that are left empty. Returns whether it was removed."""
    made = _made.pop(run_dir, [])
    if not made or made[0] != run_dir or not run_dir.is_dir():
        return False
    if not all(p.name in HYDRA_FILES for p in run_dir.iterdir()):
        return False
    # Detach the run's log file too: a closed FileHandler reopens (and fails) on the next log line.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in made[1:]:
        try:
            parent.rmdir()  # only while empty: another run may have landed beside this one meanwhile
        except OSError:
            break
    return True


def lock(run_dir: Path) -> None:
    """Take `run_dir` for this process, or raise `RunDirBusy` naming the process that has it."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = lock_holder(run_dir)
        who = f"process {pid} ({_command_line(pid)})" if pid else "another process"
        raise RunDirBusy(f"{run_dir} is in use by {who}; wait for it to end (or stop it), "
                         f"or choose another hydra.run.dir") from None
    _held[str(run_dir)] = fd


def check_writable(run_dir: Path) -> None:
    """Refuse (exit 1, one line) a run dir this process cannot write into: a read-only mount, a full disk."""
    probe = run_dir / f".write-test.{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        error = RunDirRefused(f"cannot write into {run_dir}: {e.strerror or e}; a run needs its dir writable "
                           f"(for a resume, copy the run somewhere writable and resume the copy)")
        raise error from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def unlock(run_dir: Path) -> None:
    fd = _held.pop(str(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file releases the lock


def lock_holder(path: Path) -> int | None:
    """The pid holding a flock on `path`, from /proc/locks (Linux); None where it cannot be told."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and inode in fields:
            pid = fields[fields.index(inode) - 1]
            return int(pid) if pid.isdigit() else None
    return None


def _command_line(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode(errors="replace") for w in words if w)[:200]


def record_hydra_config(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of the run (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`), written as
    Hydra writes it, once the run was accepted (train.yaml sets hydra.output_subdir=null)."""
    hydra_cfg = HydraConfig.get()
    out = run_dir / ".hydra"
    out.mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)}), out / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, out / "overrides.yaml")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files (`.NAME.PID.tmp`) a killed process left mid-write; nothing reads them."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed
