"""Scores of a model's decisions: per-class precision, recall, F1 and the confusion matrix (scikit-learn's), the
most frequent mistakes, and RMSE, MAE and R2 for numbers."""

from __future__ import annotations

from typing import Any

from sklearn.metrics import confusion_matrix, mean_absolute_error, precision_recall_fscore_support, r2_score, root_mean_squared_error
from torch import Tensor

TOP_CONFUSIONS = 15     # listed instead of a matrix too large to read


def classification_metrics(predicted: Tensor, targets: Tensor, class_names: list[str]) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support, their macro averages and the confusion matrix
    (rows: true class, columns: predicted class), of the `predicted` class indices."""
    labels = list(range(len(class_names)))
    predicted, truth = predicted.numpy(), targets.numpy()
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    per_class = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
    matrix = confusion_matrix(truth, predicted, labels=labels).tolist()
    return {"macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
            "macro_f1": float(f1.mean()), "per_class": per_class, "confusion_matrix": matrix,
            "top_confusions": top_confusions(matrix, class_names)}


def top_confusions(matrix: list[list[int]], class_names: list[str], k: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The k most frequent mistakes, as {true, predicted, count}, most frequent first."""
    mistakes = [(n, i, j) for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j and n]
    return [{"true": class_names[i], "predicted": class_names[j], "count": n}
            for n, i, j in sorted(mistakes, key=lambda m: (-m[0], m[1], m[2]))[:k]]


def regression_metrics(predicted: Tensor, targets: Tensor) -> dict[str, float]:
    y, p = targets.double().numpy(), predicted.double().numpy()
    return {"rmse": float(root_mean_squared_error(y, p)), "mae": float(mean_absolute_error(y, p)),
            "r2": float(r2_score(y, p)) if len(y) > 1 else float("nan")}
