"""How a binary classifier decides: which class is the rare ("positive") one, the threshold on its
probability (tuned on the val split, fixed, or argmax), and its precision, recall and F1.

Training's validation, `nettrain eval`, `nettrain predict` and the end-of-run confusion matrix all
decide through `predict`, so a checkpoint's threshold means the same thing everywhere. Scores are
the softmax probability of the positive class, computed in float32 (as predict shows them) and
compared in float64, so a threshold read back from a checkpoint or JSON decides exactly as it did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nettrain.data.spec import DataSpec
from nettrain.errors import invalid

log = logging.getLogger("nettrain")

AUTO_RARE_SHARE = 0.25  # threshold=auto tunes a threshold when the rare class is below this share of training
METRICS = ("precision", "recall", "f1")  # of the positive class, recorded as val_precision, ...


def is_binary(spec: DataSpec) -> bool:
    return spec.task == "classification" and spec.num_classes == 2


def positive_index(counts: list[int]) -> int:
    """The rare class: the one with fewer training samples (a tie: the second class)."""
    return 0 if counts[0] < counts[1] else 1


def class_counts(loader: Any, num_classes: int) -> list[int] | None:
    """Samples per class of a loader's whole split (every rank holds all of it), or None when its labels
    are not at hand (a custom dataset, whose every item would have to be read)."""
    labels = getattr(loader, "y", None)
    if labels is None:
        dataset = getattr(loader, "dataset", None)
        labels = getattr(dataset, "labels", None)
        labels = getattr(dataset, "targets", None) if labels is None else labels
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point:
        return None  # multi-hot targets: not a binary decision
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


def positive_scores(outputs: Tensor, positive: int) -> Tensor:
    """The positive class's softmax probability per sample (float64, from float32 as predict shows it)."""
    return outputs.float().softmax(-1)[:, positive].double()


def predict(outputs: Tensor, positive: int, threshold: float | None) -> Tensor:
    """Class indices: the positive class when its probability is >= `threshold`, else the other;
    argmax when `threshold` is None."""
    if threshold is None:
        return outputs.argmax(-1)
    chosen = positive_scores(outputs, positive) >= threshold
    return torch.where(chosen, positive, 1 - positive)


def precision_recall_f1(predicted: Tensor, actual: Tensor) -> tuple[float, float, float]:
    """Of the positive class, from boolean tensors (predicted positive, actually positive). A class
    never predicted has precision 0, one never present recall 0 (scikit-learn's zero_division=0)."""
    tp = int((predicted & actual).sum())
    n_predicted, n_actual = int(predicted.sum()), int(actual.sum())
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_actual if n_actual else 0.0
    f1 = 2 * tp / (n_predicted + n_actual) if n_predicted + n_actual else 0.0
    return precision, recall, f1


def best_threshold(scores: Tensor, actual: Tensor) -> float | None:
    """The threshold on `scores` that maximizes the positive class's F1 (None: no positive sample,
    nothing to tune). Samples of equal score are decided together; among cuts of equal F1 the one
    predicting the fewest positives wins; the threshold lies halfway between the lowest score taken
    and the highest score left (the lowest score itself when every sample is taken)."""
    n_actual = int(actual.sum())
    if not n_actual:
        return None
    s, order = scores.double().sort(descending=True, stable=True)
    tp = actual[order].double().cumsum(0)
    taken = torch.arange(1, len(s) + 1, dtype=torch.float64)
    f1 = 2 * tp / (taken + n_actual)
    cut = torch.ones_like(s, dtype=torch.bool)
    cut[:-1] = s[:-1] > s[1:]  # only between different scores
    f1[~cut] = -1.0
    k = int(f1.argmax())  # the first maximum: the fewest positives
    return float((s[k] + s[k + 1]) / 2) if k + 1 < len(s) else float(s[k])


@dataclass
class Decision:
    """A run's (or a checkpoint's) decision rule for a binary classifier."""

    positive: int                  # index of the rare class
    class_names: list[str]
    tune: bool = False             # re-tune the threshold on each validation
    fixed: float | None = None     # else this threshold (None: argmax)
    train_counts: list[int] | None = None  # samples per class in the training split, when known

    @classmethod
    def for_run(cls, setting: Any, spec: DataSpec, train: Any, monitor: str) -> Decision | None:
        """The rule `threshold=setting` gives a run on `spec`'s data, whose training split `train` is
        (None: not binary classification, which has no threshold and no val_f1 to monitor)."""
        if not is_binary(spec):
            if monitor.removeprefix("val_") in METRICS:
                raise invalid("early_stopping.monitor", monitor, f"the rare class's {monitor[4:]} exists for binary "
                              "classification only; allowed here: val_loss, val_accuracy (val_rmse, val_mae for regression)")
            if setting not in ("auto", None):
                what = "a regression task" if spec.task == "regression" else f"a {spec.num_classes}-class task"
                raise invalid("threshold", setting, f"a threshold applies to binary classification only, this is {what}; "
                                                    "allowed here: auto, null")
            return None
        counts = class_counts(train, 2)
        if counts is None:
            if setting == "auto":
                log.info("threshold=auto: the training split's class counts are not at hand (custom data): deciding "
                         "by argmax (give threshold=NUMBER to decide on %s's probability)", spec.class_names[1])
            return cls(1, list(spec.class_names), fixed=setting if setting != "auto" else None)
        positive = positive_index(counts)
        share = counts[positive] / max(sum(counts), 1)
        rule = cls(positive, list(spec.class_names), tune=setting == "auto" and share < AUTO_RARE_SHARE,
                   fixed=setting if setting != "auto" else None, train_counts=counts)
        log.info("binary decision: rare class %r (%.1f%% of training); %s", spec.class_names[positive], 100 * share,
                 rule.describe())
        return rule

    @classmethod
    def from_checkpoint(cls, ckpt_decision: dict[str, Any] | None, spec: DataSpec) -> Decision | None:
        """The rule a checkpoint records (None: not binary; a checkpoint without one decides by argmax)."""
        if not is_binary(spec):
            return None
        d = ckpt_decision or {}
        return cls(int(d.get("positive_index", 1)), list(spec.class_names), fixed=d.get("threshold"))

    @property
    def positive_class(self) -> str:
        return self.class_names[self.positive]

    def describe(self, threshold: float | None = None) -> str:
        if self.tune:
            return "threshold tuned on the val split each epoch (the rare class's best F1)"
        threshold = self.fixed if threshold is None else threshold
        if threshold is None:
            return "argmax"
        return f"{self.positive_class} when its probability >= {threshold:.4g}"

    def predict(self, outputs: Tensor, threshold: float | None) -> Tensor:
        return predict(outputs, self.positive, threshold)

    def record(self) -> dict[str, Any]:
        """What metrics.json says about the run's decision: the rare class and how it is decided."""
        return {"positive_class": self.positive_class, "positive_index": self.positive,
                "train_counts": dict(zip(self.class_names, self.train_counts)) if self.train_counts else None,
                "rule": self.describe()}

    def state(self, threshold: float | None) -> dict[str, Any]:
        """What a checkpoint stores: the positive class and the threshold its weights decide with."""
        return {"positive_class": self.positive_class, "positive_index": self.positive,
                "threshold": threshold, "tuned": self.tune}

    def measure(self, outputs: Tensor | None, targets: Tensor | None,
                gather: Callable[[Tensor], Tensor] = lambda t: t) -> tuple[float | None, dict[str, float]]:
        """(threshold, metrics) on a split's outputs and targets (`gather` joins the ranks' shards):
        the threshold tuned on them (or fixed, or None for argmax) and, at it, accuracy and the
        positive class's precision, recall and F1; `threshold` is recorded as 0.5 for argmax."""
        outputs = gather(outputs if outputs is not None else torch.empty(0, 2))
        targets = gather(targets if targets is not None else torch.empty(0, dtype=torch.long))
        if targets.dim() != 1:
            return None, {}  # multi-hot targets: no single decision
        actual = targets == self.positive
        threshold = best_threshold(positive_scores(outputs, self.positive), actual) if self.tune else self.fixed
        predicted = predict(outputs, self.positive, threshold)
        precision, recall, f1 = precision_recall_f1(predicted == self.positive, actual)
        accuracy = float((predicted == targets).double().mean()) if len(targets) else 0.0
        return threshold, {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
                           "threshold": 0.5 if threshold is None else threshold}

