"""A run's set of checkpoints: last.pt (what a resume reads), best.pt (by the monitored metric) and the top-k,
kept consistent whatever instant a kill lands at, and a checkpoint's training state restored into a run."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nettrain.errors import UserError
from nettrain.files import atomic_write_bytes
from nettrain.records.checkpoint import load_weights, save_checkpoint
from nettrain.training.state import Monitor, Progress

log = logging.getLogger("nettrain")


def restore(ckpt: dict[str, Any], model: torch.nn.Module, ema: torch.nn.Module | None,
             optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler) -> None:
    """Load a checkpoint's training state (not the RNGs: those go last, after everything that draws)."""
    load_weights(model, ckpt.get("train_model") or ckpt["model"], ckpt["path"], "the run's model")
    if ema is not None:
        load_weights(ema.module, ckpt["model"], ckpt["path"], "the run's weight average")
        ema.n_averaged.fill_(ckpt.get("ema_updates", 0))
    saved, built = len(ckpt["optimizer"]["param_groups"]), len(optimizer.param_groups)
    if saved != built:  # load_state_dict would stop with a ValueError
        raise UserError(f"cannot resume {ckpt['path']}: its optimizer state has {saved} parameter group(s), this "
                        f"run's optimizer {built} (optimizer or model settings differ); start a new run instead")
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])


def save_epoch(state: dict[str, Any], ckpt_dir: Path, progress: Progress, monitor: Monitor, top_k: int,
                improved: bool, value: float, epoch: int) -> None:
    """last.pt always; best.pt when the monitored metric improved; the top-k by that metric.

    The order makes a kill at any instant repairable (`repair`): a new top-k file
    first (nothing names it yet), then last.pt, the commit point that resume reads, then best.pt;
    top-k files that dropped out are deleted only once last.pt no longer lists them."""
    paths, dropped = [], []
    if top_k and math.isfinite(value):
        name = f"epoch={epoch:03d}-{monitor.key}={value:.4f}.pt"
        ranked = sorted([*progress.top_k, [value, name]], key=lambda e: e[0], reverse=monitor.mode == "max")
        if [value, name] in ranked[:top_k]:
            paths.append(ckpt_dir / name)
        dropped = [name for _, name in ranked[top_k:]]
        progress.top_k = ranked[:top_k]
        state["progress"] = asdict(progress)
    paths.append(ckpt_dir / "last.pt")
    if improved:
        paths.append(ckpt_dir / "best.pt")
    save_checkpoint(state, *paths)
    for name in dropped:
        _remove(ckpt_dir / name)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # e.g. a permission error: an extra file on disk loses nothing
        log.warning("could not delete %s: %s", path, e.strerror or e)


def repair(ckpt: dict[str, Any], ckpt_dir: Path) -> None:
    """Bring best.pt and the top-k files in line with last.pt after a kill between ``save_epoch`'s
    renames: a best.pt one epoch behind is replaced by last.pt (that epoch was the best), a top-k
    file last.pt does not list is deleted, a missing one of last.pt's own epoch is restored."""
    last = ckpt_dir / "last.pt"
    if Path(ckpt["path"]) != last:
        return  # resuming from another file (best.pt, a top-k one): nothing to compare against
    progress = ckpt["progress"]
    epoch_end = progress["batch"] == 0

    def copy_last(to: Path) -> None:
        log.warning("repairing %s from %s (a kill between checkpoint writes)", to.name, last.name)
        atomic_write_bytes(last.read_bytes(), to)

    best = ckpt_dir / "best.pt"
    if epoch_end and progress["best_epoch"] == progress["epoch"] and _saved_epoch(best) != progress["epoch"]:
        copy_last(best)
    listed = {name for _, name in progress["top_k"]}
    for path in ckpt_dir.glob("epoch=*.pt"):
        if path.name not in listed:
            _remove(path)
    for name in listed:
        if not (ckpt_dir / name).is_file() and epoch_end and name.startswith(f"epoch={progress['epoch']:03d}-"):
            copy_last(ckpt_dir / name)


def _saved_epoch(path: Path) -> int | None:
    """The epoch count a checkpoint was saved at (None when it is missing or unreadable)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["progress"]["epoch"]
    except Exception:  # noqa: BLE001 - missing, torn or foreign: all mean "repair it"
        return None
