"""Loss and accuracy (or RMSE/MAE) summed on the device, read back only when reported."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nettrain.data.loaders import Loader


def _hits(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """Correct predictions in a batch (for regression: the sum of absolute errors), a float scalar."""
    if task == "regression":
        return (outputs.squeeze(-1).float() - targets.float()).abs().sum()
    if targets.dim() > 1:  # multi-hot targets: a sample is right when every label is
        return ((outputs > 0) == (targets > 0.5)).all(-1).sum(dtype=torch.float32)
    return (outputs.argmax(-1) == targets).sum(dtype=torch.float32)


def batch_totals(outputs: Tensor, targets: Tensor, loss: Tensor, task: str) -> Tensor:
    """[loss x n, correct (or sum of absolute errors), n] for one batch, without leaving the device."""
    hits = _hits(outputs, targets, task)
    return torch.stack((loss.detach().float() * targets.shape[0], hits, hits.new_full((), float(targets.shape[0]))))


class RunningTotals:
    """An epoch's [loss sum, correct (or sum of absolute errors), samples], added batch by batch.

    On a GPU they stay on the device and are read once an epoch, so no step waits for the host. On
    the CPU, where every tensor op is a measurable part of a small model's step, a step adds its
    loss as a Python number and sets its outputs aside; their correct predictions are counted
    `every` batches at once.
    """

    def __init__(self, device: torch.device, task: str, start: Tensor | None = None, every: int = 32) -> None:
        self.device, self.task, self.every = device, task, every
        start = torch.zeros(3) if start is None else start
        self.values: Tensor | list[float] = start.tolist() if device.type == "cpu" else start.to(device).clone()
        self.pending: list[tuple[Tensor, Tensor]] = []

    def add(self, outputs: Tensor, targets: Tensor, loss: Tensor) -> None:
        if isinstance(self.values, Tensor):
            self.values += batch_totals(outputs, targets, loss, self.task)
            return
        self.values[0] += loss.item() * targets.shape[0]
        self.values[2] += targets.shape[0]
        self.pending.append((outputs, targets))
        if len(self.pending) == self.every:
            self._count()

    @torch.no_grad()
    def _count(self) -> None:
        if self.pending:
            outputs, targets = zip(*self.pending)
            self.values[1] += _hits(torch.cat(outputs), torch.cat(targets), self.task).item()
            self.pending.clear()

    def mean_loss(self) -> float:
        """The epoch's mean loss so far, for the progress bar (on a GPU this one read waits for it)."""
        loss_sum, n = (self.values[0], self.values[2]) if isinstance(self.values, list) else self.values[::2].tolist()
        return loss_sum / max(n, 1.0)

    def tensor(self) -> Tensor:
        """The totals as a tensor (on the device) to all-reduce, summarize or checkpoint."""
        if isinstance(self.values, Tensor):
            return self.values.clone()
        self._count()
        # float64 keeps Python's sums exact through a checkpoint: a resumed run matches an uninterrupted one.
        return torch.tensor(self.values, dtype=torch.float64)


def summarize(totals: Tensor, task: str) -> dict[str, float]:
    """{loss, accuracy} for classification; {loss, rmse, mae} for regression (loss is the MSE)."""
    loss_sum, hits, n = totals.tolist()
    n = max(n, 1.0)
    if task == "regression":
        return {"loss": loss_sum / n, "rmse": math.sqrt(max(loss_sum / n, 0.0)), "mae": hits / n}
    return {"loss": loss_sum / n, "accuracy": hits / n}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Loader, criterion: nn.Module, *, device: torch.device, task: str,
             autocast: Callable[[], Any], limit: int | None = None, collect: bool = False,
             reduce: Any = None, on_batch: Callable[[], None] | None = None
             ) -> tuple[dict[str, float], Tensor | None, Tensor | None]:
    """Metrics of `model` over `loader` (first `limit` batches). With `collect`, also every output
    and target (gathered on the device, returned on the CPU), for confusion matrices, per-class
    metrics and the decision threshold. `reduce` sums the totals
    across data-parallel ranks; `on_batch` is called after each batch (a progress bar)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, device=device)
    outputs, targets = [], []
    for i, (x, y) in enumerate(loader.batches(0, device=device)):
        if limit is not None and i >= limit:
            break
        with autocast():
            out = model(x)
            loss = criterion(out, y)
        totals += batch_totals(out, y, loss, task)
        if collect:
            outputs.append(out.float())  # stays on the device: no batch waits for a copy to the host
            targets.append(y)
        if on_batch is not None:
            on_batch()
    if reduce is not None:
        reduce(totals)
    model.train(was_training)
    if not collect:
        return summarize(totals, task), None, None
    return summarize(totals, task), torch.cat(outputs).cpu() if outputs else None, torch.cat(targets).cpu() if targets else None
