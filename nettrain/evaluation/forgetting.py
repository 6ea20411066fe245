"""What an update of a model learned and what it forgot: its accuracy (RMSE for regression, the loss for other
tasks) on the old model's validation set and on held-out new examples, before and after, and the gate that
rejects an update which forgot more than it may.

Both models are measured by `evaluation.metrics.evaluate`, as validation measures them. The old model knows
fewer classes than the new one when the update added some: its outputs get a very low logit for each new class
(it never predicts one), so its accuracy on them is 0, as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from nettrain.data.base import DataContext
from nettrain.data.examples import Examples, loader_of
from nettrain.data.loaders import BatchTransform
from nettrain.data.spec import DataSpec
from nettrain.evaluation.metrics import evaluate
from nettrain.models.losses import build_loss
from nettrain.runtime import Runtime, resolve_precision

NEVER = -1e4  # the logit of a class a model does not know: softmax gives it nothing, argmax never picks it


@dataclass
class Figures:
    """One model's figures (a fraction for accuracy; None where there is nothing to measure)."""

    metric: str                      # accuracy | rmse | loss
    old: float | None                # on the old model's validation set
    new: float | None                # on the held-out new examples
    new_classes: float | None        # on those of them whose class the old model did not know

    def record(self) -> dict[str, Any]:
        return asdict(self)


def metric_of(task: str) -> tuple[str, bool]:
    """(the gate's metric for a task, whether higher is better)."""
    return {"classification": ("accuracy", True), "regression": ("rmse", False)}.get(task, ("loss", False))


class Padded(nn.Module):
    """A model's outputs with a NEVER logit for each class it does not know (the classes after its own)."""

    def __init__(self, model: nn.Module, classes: int) -> None:
        super().__init__()
        self.model, self.classes = model, classes

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return torch.cat([out, out.new_full((out.shape[0], self.classes - out.shape[1]), NEVER)], dim=1)


def measure(model: nn.Module, old_val: Examples, holdout: Examples | None, *, spec: DataSpec, cfg: DictConfig,
            transform: BatchTransform | None, device: torch.device, old_classes: int, classes: int) -> Figures:
    """`model`'s figures on the old validation set and the held-out new examples (`spec`: the new run's data,
    `cfg` its config: the loss, precision and batch size validation used; `transform` its validation batches').
    `model` predicts `classes` classes, the old model `old_classes`."""
    metric, _ = metric_of(spec.task)
    if spec.task == "classification" and spec.num_classes > classes:
        model = Padded(model, spec.num_classes)
    ctx = DataContext(eval_batch_size=cfg.trainer.eval_batch_size or 4 * cfg.data.batch_size)
    criterion = build_loss(cfg.loss, spec, None).to(device)
    rt = Runtime(device=device, amp_dtype=resolve_precision(cfg.trainer.precision, device), channels_last=False)

    def score(examples: Examples | None, only: Tensor | None = None) -> float | None:
        if examples is None or not len(examples):
            return None
        if only is not None:
            if not bool(only.any()):
                return None
            examples = examples.take(torch.nonzero(only).flatten())
        loader = loader_of(examples, cfg.data, ctx, train=False, transform=transform)
        summary, _, _ = evaluate(model, loader, criterion, device=device, task=spec.task, autocast=rt.autocast)
        return summary[metric]

    new_classes = holdout.y >= old_classes if holdout is not None and spec.task == "classification" \
        and spec.num_classes > old_classes else None
    return Figures(metric, score(old_val), score(holdout), score(holdout, new_classes) if new_classes is not None else None)


def gate(before: Figures, after: Figures, max_forgetting: float, force: bool) -> dict[str, Any]:
    """The verdict on an update: what it forgot on the old validation set (points of accuracy; for an error or a
    loss, the percent it rose), and `accepted`, `rejected` (more than `max_forgetting`) or `forced` (rejected,
    kept anyway)."""
    higher = before.metric == "accuracy"
    if before.old is None or after.old is None:
        forgot = 0.0
    elif higher:
        forgot = 100 * (before.old - after.old)
    else:
        forgot = 100 * (after.old - before.old) / max(abs(before.old), 1e-12)
    rejected = forgot > max_forgetting
    return {"metric": before.metric, "forgot": round(forgot, 3), "unit": "points" if higher else "percent",
            "max_forgetting": max_forgetting, "before": before.record(), "after": after.record(),
            "verdict": ("forced" if force else "rejected") if rejected else "accepted"}
