"""What stops a run from the outside or from within: a signal (Ctrl-C, a scheduler's SIGTERM) asking it to stop
after the current step, and a loss that diverged."""

from __future__ import annotations

import logging
import math
import signal
from typing import Any

import torch

from nettrain import runtime
from nettrain.records.console import console
from nettrain.training import distributed

log = logging.getLogger("nettrain")


class StopSignal:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. a launcher's worker thread): no handler
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            console.print("[red]second interrupt: exiting now[/red]")
            raise SystemExit(130)
        self.signum = signum
        log.warning("%s received: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class DivergenceGuard:
    """Finds the first step whose loss is NaN/Inf or has blown up past `factor` x the first step's
    loss (at least 1): a learning rate too high sends the loss to 1e7 long before it turns NaN.
    On the CPU reading the loss costs nothing, so it checks every step. On a GPU a step only sets its
    loss aside; every `every` steps they are judged together on the device (a few kernels, where one
    step's judgement took ten) and the verdict is read at log time, so no step waits for the host.
    Under DDP it is read at log time too, and the ranks agree (a rank's NaN stops them all at the
    same step, never a hang)."""

    def __init__(self, rt: runtime.Runtime, factor: float | None, every: int = 32) -> None:
        self.rt, self.every = rt, every
        self.eager = rt.device.type == "cpu" and not rt.distributed
        self.factor = factor if factor is not None else math.inf
        self.limit: torch.Tensor | float | None = None
        self.pending: list[tuple[torch.Tensor, int]] = []
        self.bad = torch.tensor([-1.0, 0.0], device=rt.device)  # [step, loss] of the first bad step; -1: none yet

    def update(self, loss: torch.Tensor, step: int) -> tuple[int, float] | None:
        if self.eager:
            value = loss.item()
            if self.limit is None:
                self.limit = max(value, 1.0) * self.factor
            return None if math.isfinite(value) and value <= self.limit else (step, value)
        self.pending.append((loss.detach(), step))
        if len(self.pending) == self.every:
            self._judge()
        return None

    def _judge(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for loss, _ in self.pending]).float()
        steps = runtime.to_device(self.rt.device, torch.tensor([float(step) for _, step in self.pending]))
        self.pending.clear()
        if self.limit is None:
            self.limit = losses[0].clamp(min=1.0) * self.factor
        bad = ~losses.isfinite() | (losses > self.limit)
        first = bad.int().argmax()  # argmax gives the first of equal maxima: the first bad step (0 when none is)
        found = (self.bad[0] < 0) & bad.any()
        self.bad = torch.where(found, torch.stack([steps[first], losses[first]]), self.bad)

    def check(self) -> tuple[int, float] | None:
        if self.eager:
            return None
        self._judge()
        bad = distributed.all_gather(self.bad, self.rt)  # one [step, loss] row per rank
        bad = bad[bad[:, 0] >= 0]
        if not len(bad):
            return None
        step, value = bad[bad[:, 0].argmin()].tolist()
        return int(step), value
