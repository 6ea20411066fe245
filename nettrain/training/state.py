"""What a training run carries from step to step and decides by: its progress (checkpointed, restored on
resume), the monitored metric that stops it early and picks the best checkpoint, and the epochs it plans."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from nettrain.config.rules import monitor_mode
from nettrain.data.spec import DataSpec
from nettrain.inference.decision import Decision


@dataclass
class Progress:
    """Everything the loop carries from step to step; a checkpoint stores it, resume restores it."""

    epoch: int = 0                   # the epoch in progress (0-based)
    batch: int = 0                   # batches of `epoch` already trained (a mid-epoch checkpoint)
    step: int = 0                    # optimizer steps so far
    best: float | None = None        # best value of the monitored metric
    best_epoch: int | None = None    # 1-based
    stale_epochs: int = 0            # epochs since the monitored metric last improved
    overfit_warned: bool = False
    top_k: list[list[Any]] = field(default_factory=list)   # [value, file name], best first
    threshold: float | None = None   # binary classification: the last validation's decision threshold (None: argmax)


class Monitor:
    """Early stopping on `early_stopping.monitor`; also decides which checkpoint is best."""

    def __init__(self, cfg: DictConfig) -> None:
        self.key, self.patience, self.min_delta = cfg.monitor, cfg.patience, cfg.min_delta
        self.mode = monitor_mode(cfg.monitor, cfg.mode)

    def update(self, progress: Progress, value: float, epoch: int) -> bool:
        """Record an epoch's monitored value; True when it beats the best so far by more than min_delta."""
        if progress.best is None:
            improved = math.isfinite(value)
        elif self.mode == "min":
            improved = value < progress.best - self.min_delta
        else:
            improved = value > progress.best + self.min_delta
        if improved:
            progress.best, progress.best_epoch, progress.stale_epochs = value, epoch, 0
        else:
            progress.stale_epochs += 1
        return improved

    def exhausted(self, progress: Progress) -> bool:
        return bool(self.patience) and progress.stale_epochs >= self.patience


def auto_monitor(spec: DataSpec, decision: Decision | None) -> str:
    """What `early_stopping.monitor=auto` watches: the rare class's F1 when a threshold is tuned for
    it (accuracy hides a rare class: 97 % is what always saying "no failure" scores), accuracy for
    other classification (with label smoothing the val loss bottoms out before the accuracy peaks),
    the loss for regression and language models."""
    if spec.task in ("regression", "lm"):
        return "val_loss"
    return "val_f1" if decision is not None and decision.tune else "val_accuracy"


def planned_epochs(trainer: DictConfig, steps_per_epoch: float) -> tuple[int, list[str]]:
    """The epochs a run trains, and the limits that set them: trainer.max_epochs, or fewer when
    trainer.max_steps comes first, in whole epochs (the last may pass max_steps; every epoch is
    validated and scheduled alike); both when they agree. Derived from the config and the data
    alone, so a resumed run plans what the interrupted one planned."""
    limits = {"trainer.max_epochs": trainer.max_epochs}
    if trainer.get("max_steps"):
        limits["trainer.max_steps"] = math.ceil(trainer.max_steps / steps_per_epoch)
    epochs = min(limits.values())
    return epochs, [key for key, n in limits.items() if n == epochs]
