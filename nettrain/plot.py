"""`nettrain plot RUN_DIR`: a run's train vs val curves from its metrics.json, as a PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from nettrain.config import absolute
from nettrain.errors import UserError
from nettrain.inference import parse_args, run_command

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain plot RUN_DIR [output=FILE.png]

Draw the run's train and val loss and accuracy (regression: RMSE) per epoch from
RUN_DIR/metrics.json, with the best epoch marked. Writes RUN_DIR/curves.png unless output= is given.
Works on a finished run and on one still training.

example:
  nettrain plot outputs/2025-01-31/12-00-00
"""

DEFAULTS: dict[str, Any] = {"run": None, "output": None}


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


def curves_figure(history: list[dict[str, Any]], best_epoch: int | None, title: str) -> Any:
    """Loss, and accuracy (or RMSE), train vs val per epoch; the best epoch as a dashed line and a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    second = next((k for k in ("accuracy", "rmse", "mae") if f"val_{k}" in history[0]), None)
    panels = ["loss"] + ([second] if second else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    epochs = [r["epoch"] for r in history]
    best = next((r for r in history if r["epoch"] == best_epoch), None)
    for ax, metric in zip(axes[0], panels):
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
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _plot(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("run",), paths=("run", "output"), positional="run")
    run_dir = Path(absolute(args["run"]))
    history, best_epoch = read_history(run_dir)
    output = Path(absolute(args["output"])) if args["output"] else run_dir / "curves.png"
    if output.suffix.lower() != ".png":
        raise UserError(f"invalid output={args['output']!r}: must be a .png file")
    figure = curves_figure(history, best_epoch, str(run_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(output, dpi=120)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror or e}") from None
    log.info("wrote %s", output)
    return 0


def main(argv: list[str]) -> int:
    return run_command(_plot, argv, USAGE)
