"""What `nettrain eval` leaves on disk: metrics.json, the confusion matrix as a PNG and as a TensorBoard image,
the scalars for TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from nettrain.evaluation.checkpoint import Evaluation
from nettrain.files import atomic_write_text
from nettrain.records.figures import confusion_figure


def write_report(result: Evaluation, output: Path) -> None:
    """metrics.json, the confusion matrix as a PNG and as a TensorBoard image, scalars for TensorBoard."""
    output.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(output))
    for key in ("loss", "accuracy", "macro_f1", "f1", "threshold", "rmse", "mae", "r2", "bpc", "perplexity"):
        if result.metrics.get(key) is not None:
            writer.add_scalar(f"eval_{result.split}/{key}", result.metrics[key], 0)
    if "confusion_matrix" in result.metrics:
        figure = confusion_figure(result.metrics["confusion_matrix"], result.spec.class_names,
                                  f"confusion matrix: {result.split} split, {result.metrics['samples']} samples")
        figure.savefig(output / "confusion_matrix.png", dpi=120, bbox_inches="tight")
        writer.add_figure(f"eval_{result.split}/confusion_matrix", figure, 0)  # closes the figure
    writer.close()
    atomic_write_text(output / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
