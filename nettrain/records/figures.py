"""Figures of a run: its train vs val curves and its confusion matrix.

matplotlib's Agg backend: no screen is ever needed (a training server, CI, a notebook alike).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from nettrain.errors import UserError  # noqa: E402
from nettrain.records.runs import read_run  # noqa: E402


def read_history(run_dir: Path) -> tuple[list[dict[str, Any]], int | None]:
    """The run's per-epoch records and its best epoch (1-based)."""
    path = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise UserError(f"no such run dir: {run_dir}")
    try:
        record = json.loads(path.read_text())
        history = record["history"]
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a run dir: it has no metrics.json") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not history:
        raise UserError(f"{path} has no finished epoch yet: nothing to plot")
    return history, record.get("best_epoch")


def run_title(run_dir: Path) -> str:
    """The run's name (experiment or model), its dir's name and the overrides it was started with."""
    run = read_run(run_dir)
    overrides = " ".join(o for o in run.overrides if not o.startswith("hydra."))
    return f"{run.name}: {run_dir.name}" + (f"\n{overrides}" if overrides else "")


def curves_figure(history: list[dict[str, Any]], best_epoch: int | None, title: str, log_loss: bool = False) -> Any:
    """Loss, accuracy (or RMSE), train vs val per epoch, and the learning rate; the best epoch as a
    dashed line and a star."""
    second = next((k for k in ("accuracy", "rmse", "mae") if f"val_{k}" in history[0]), None)
    panels = ["loss"] + ([second] if second else []) + (["lr"] if "lr" in history[0] else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    epochs = [r["epoch"] for r in history]
    best = next((r for r in history if r["epoch"] == best_epoch), None)
    for ax, metric in zip(axes[0], panels):
        if metric == "lr":
            ax.plot(epochs, [r["lr"] for r in history], color="tab:purple", label="lr (end of epoch)")
            ax.set_yscale("log")
            if best is not None:
                ax.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
            ax.set_title("learning rate")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3, which="both")
            ax.legend()
            continue
        for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
            values = [r.get(f"{split}_{metric}") for r in history]
            ax.plot(epochs, values, marker="o" if len(epochs) <= 30 else None, markersize=3, color=color, label=split)
        if best is not None:
            ax.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1)
            value = best[f"val_{metric}"]
            ax.plot([best_epoch], [value], marker="*", markersize=14, color="tab:green", linestyle="none",
                    label=f"best epoch {best_epoch}: val {value:.2%}" if metric == "accuracy"
                    else f"best epoch {best_epoch}: val {value:.4f}")
        ax.set_title(f"{metric}: train vs val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if metric == "loss" and log_loss:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def write_curves(run_dir: Path, output: Path, log_loss: bool = False) -> Path:
    """Draw the run's curves into `output` (a .png); returns it."""
    history, best_epoch = read_history(run_dir)
    if output.suffix.lower() != ".png":
        raise UserError(f"invalid output={str(output)!r}: must be a .png file")
    figure = curves_figure(history, best_epoch, run_title(run_dir), log_loss)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(output, dpi=120)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror or e}") from None
    finally:
        plt.close(figure)
    return output


def confusion_figure(matrix: list[list[int]], class_names: list[str], title: str) -> Any:
    n = len(class_names)
    size = min(max(4.0, 0.45 * n + 2), 24.0)
    figure, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, include_values=n <= 30,
        xticks_rotation="vertical" if n > 10 else "horizontal")
    ax.set_title(title)
    return figure


def range_test_figure(lrs: list[float], losses: list[float], smoothed: list[float], best_index: int,
                      suggested_lr: float, title: str) -> Any:
    """A learning-rate range test's loss against lr (log scale), the suggested lr marked."""
    figure, ax = plt.subplots(figsize=(7, 4.2))
    finite = [(lr, raw, s) for lr, raw, s in zip(lrs, losses, smoothed) if math.isfinite(s)]
    shown_lrs, raw, shown = (list(column) for column in zip(*finite))
    ax.plot(shown_lrs, raw, color="tab:blue", alpha=0.3, linewidth=1, label="batch loss")
    ax.plot(shown_lrs, shown, color="tab:blue", label="smoothed loss")
    ax.axvline(suggested_lr, color="tab:green", linestyle="--", label=f"suggested lr {suggested_lr:.2e}")
    ax.plot([lrs[best_index]], [smoothed[best_index]], marker="o", color="tab:red", linestyle="none",
            label=f"lowest loss at lr {lrs[best_index]:.2e}")
    ax.set_xscale("log")
    # The exploding tail would squash the useful part of the curve.
    top, bottom = max(shown[: best_index + 1]), min(raw + shown)
    span = max(top - bottom, 1e-3 * max(abs(top), 1.0))
    ax.set_ylim(bottom - 0.05 * span, top + 0.3 * span)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    figure.tight_layout()
    return figure
