"""Is the model memorizing the training set? Validation watched apart from training, on the trend.

Single epochs mislead both ways: validation loss is noisy (three rises in a row happen to a model
still learning), and a slow rise with dips never makes three in a row. So the test reads the run so
far as a practitioner reads the curves:

- no new best validation loss for `patience` epochs (a new best means it is still learning),
- validation loss, averaged over those epochs, clearly above its best (by REL_RISE), and so is
  every one of them: a single validation back near the best says the rise was noise (200 val
  photos swing by 0.07 from one epoch to the next while the model still learns),
- training loss still falling below where it was at the best epoch,
- and the gap between them widening: training fits what validation does not. For classification
  training accuracy must also lead validation accuracy by GAP_ACCURACY: a model at 69 % on both
  is not memorizing, however its validation loss wobbles.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

REL_RISE = 0.03       # smoothed val loss this far above its best
GAP_ACCURACY = 0.05   # train accuracy ahead of val accuracy by at least this


def memorizing(history: list[dict[str, Any]], patience: int) -> str | None:
    """The warning for a history of epoch records (train_loss, val_loss, and for classification
    train_accuracy, val_accuracy), or None while the curves do not show memorizing."""
    if len(history) <= patience:
        return None
    val = [r["val_loss"] for r in history]
    best = min(range(len(val)), key=val.__getitem__)
    recent = history[-patience:]
    if best >= len(history) - patience:
        return None
    smoothed_val = mean(r["val_loss"] for r in recent)
    smoothed_train = mean(r["train_loss"] for r in recent)
    at_best = history[best]
    if smoothed_val <= val[best] * (1 + REL_RISE) or smoothed_train >= at_best["train_loss"]:
        return None
    if min(r["val_loss"] for r in recent) <= val[best] * (1 + REL_RISE):
        return None
    if smoothed_val - smoothed_train <= at_best["val_loss"] - at_best["train_loss"]:
        return None
    if "train_accuracy" in recent[-1] and "val_accuracy" in recent[-1]:
        lead = mean(r["train_accuracy"] - r["val_accuracy"] for r in recent)
        if lead < GAP_ACCURACY:
            return None
    accuracy = (f" (accuracy: train {recent[-1]['train_accuracy']:.0%}, val {recent[-1]['val_accuracy']:.0%})"
                if "train_accuracy" in recent[-1] else "")
    return (f"overfitting: val loss is {smoothed_val:.4g} over the last {patience} epochs against its best "
            f"{val[best]:.4g} at epoch {best + 1}, while train loss kept falling to {recent[-1]['train_loss']:.4g}"
            f"{accuracy}: the model has started memorizing the training set. The best epoch's weights are kept "
            f"(checkpoints/best.pt); consider early stopping (early_stopping.patience), more dropout "
            f"(model.dropout), weight decay or more data.")
