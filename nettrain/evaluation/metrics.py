"""Loss and accuracy (or RMSE/MAE; for a language model, per token: loss, perplexity, bits per character) summed
on the device, read back only when reported."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nettrain.data.loaders import Loader


def _hits(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """Correct predictions in a batch (for regression: the sum of absolute errors), a float64 scalar.
    A language model's outputs are already its predicted tokens (`RunningTotals.add`)."""
    if task == "lm":
        return (outputs == targets).sum(dtype=torch.float64)
    if task == "regression":
        return (outputs.squeeze(-1).double() - targets.double()).abs().sum()
    if targets.dim() > 1:  # multi-hot targets: a sample is right when every label is
        return ((outputs > 0) == (targets > 0.5)).all(-1).sum(dtype=torch.float64)
    return (outputs.argmax(-1) == targets).sum(dtype=torch.float64)


class RunningTotals:
    """An epoch's (or a validation pass's) [loss sum, correct (or sum of absolute errors), samples], batch by batch.

    A step only sets its loss, outputs and targets aside: no tensor op, which on a GPU would be a
    kernel launch that a small model's step waits behind, and on the CPU a measurable part of it.
    Every `every` batches they are counted at once, on their device and in float64, where sums of
    float32 losses are exact: a resumed run, whose batches are grouped differently, adds up to the
    same totals. They are read only when reported (the progress bar, the epoch's end).

    A language model's samples are its tokens (the loss is a mean per token), and its step keeps only the
    predicted tokens: 32 batches of logits [batch, block, vocabulary] would be gigabytes.
    """

    def __init__(self, device: torch.device, task: str, start: Tensor | None = None, every: int = 32) -> None:
        self.task, self.every = task, every
        self.values = (torch.zeros(3, dtype=torch.float64) if start is None else start.double()).to(device)
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, outputs: Tensor, targets: Tensor, loss: Tensor) -> None:
        self.pending.append((outputs.detach().argmax(-1) if self.task == "lm" else outputs.detach(), targets, loss.detach()))
        if len(self.pending) == self.every:
            self._count()

    @torch.no_grad()
    def _count(self) -> None:
        if not self.pending:
            return
        outputs, targets, losses = zip(*self.pending)
        self.pending.clear()
        by_size: dict[int, list[Tensor]] = {}  # every batch but an epoch's last is the same size: one group
        for target, loss in zip(targets, losses):
            by_size.setdefault(self._samples(target), []).append(loss)
        loss_sum = sum(torch.stack(group).double().sum() * n for n, group in by_size.items())
        hits = _hits(torch.cat(outputs), torch.cat(targets), self.task)
        self.values += torch.stack((loss_sum, hits, hits.new_full((), float(sum(map(self._samples, targets))))))

    def _samples(self, targets: Tensor) -> int:
        return targets.numel() if self.task == "lm" else targets.shape[0]

    def mean_loss(self) -> float:
        """The epoch's mean loss so far, for the progress bar (on a GPU this read waits for the device)."""
        self._count()
        loss_sum, n = self.values[::2].tolist()
        return loss_sum / max(n, 1.0)

    def tensor(self) -> Tensor:
        """The totals (float64, on the device) to all-reduce, summarize or checkpoint."""
        self._count()
        return self.values.clone()


def summarize(totals: Tensor, task: str, char_level: bool = False) -> dict[str, float]:
    """{loss, accuracy} for classification; {loss, rmse, mae} for regression (loss is the MSE); for a language
    model {loss (nats per token), perplexity, accuracy (of the next token)}, and bpc, bits per character,
    where a token is a character (`char_level`)."""
    loss_sum, hits, n = totals.tolist()
    n = max(n, 1.0)
    if task == "lm":
        loss = loss_sum / n
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": hits / n,
                **({"bpc": loss / math.log(2)} if char_level else {})}
    if task == "regression":
        return {"loss": loss_sum / n, "rmse": math.sqrt(max(loss_sum / n, 0.0)), "mae": hits / n}
    return {"loss": loss_sum / n, "accuracy": hits / n}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Loader, criterion: nn.Module, *, device: torch.device, task: str,
             autocast: Callable[[], Any], limit: int | None = None, collect: bool = False,
             reduce: Any = None, on_batch: Callable[[], None] | None = None, char_level: bool = False
             ) -> tuple[dict[str, float], Tensor | None, Tensor | None]:
    """Metrics of `model` over `loader` (first `limit` batches). With `collect`, also every output
    and target (gathered on the device, returned on the CPU), for confusion matrices, per-class
    metrics and the decision threshold. `reduce` sums the totals
    across data-parallel ranks; `on_batch` is called after each batch (a progress bar); `char_level`: a
    language model's tokens are characters (see `summarize`)."""
    was_training = model.training
    model.eval()
    running = RunningTotals(device, task)
    outputs, targets = [], []
    for i, (x, y) in enumerate(loader.batches(0, device=device)):
        if limit is not None and i >= limit:
            break
        with autocast():
            out = model(x)
            loss = criterion(out, y)
        running.add(out, y, loss)
        if collect:
            outputs.append(out.float())  # stays on the device: no batch waits for a copy to the host
            targets.append(y)
        if on_batch is not None:
            on_batch()
    totals = running.tensor()
    if reduce is not None:
        reduce(totals)
    model.train(was_training)
    summary = summarize(totals, task, char_level)
    if not collect:
        return summary, None, None
    return summary, torch.cat(outputs).cpu() if outputs else None, torch.cat(targets).cpu() if targets else None
