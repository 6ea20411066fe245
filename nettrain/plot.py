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
usage: nettrain plot [run=]RUN_DIR [output=FILE.png] [log_loss=true|false]

Draw the run's train and val loss, accuracy (regression: RMSE) and learning
rate per epoch from RUN_DIR/metrics.json, with the best epoch marked, titled
with the run's name and overrides. Writes RUN_DIR/curves.png unless output= is
given. log_loss=true draws the loss on a log scale. Works on a finished run and
on one still training, and on a sweep's job dir (names with `=`).

examples:
  nettrain plot outputs/2025-01-31/12-00-00-123456_mlp
  nettrain plot outputs/multirun/2025-01-31/12-00-00-123456/0_optimizer.lr=0.01
"""

DEFAULTS: dict[str, Any] = {"run": None, "output": None, "log_loss": False}


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
    from nettrain.runs import read_run

    run = read_run(run_dir)
    overrides = " ".join(o for o in run.overrides if not o.startswith("hydra."))
    return f"{run.name}: {run_dir.name}" + (f"\n{overrides}" if overrides else "")


def curves_figure(history: list[dict[str, Any]], best_epoch: int | None, title: str, log_loss: bool = False) -> Any:
    """Loss, accuracy (or RMSE), train vs val per epoch, and the learning rate; the best epoch as a
    dashed line and a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

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
    import matplotlib.pyplot as plt

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


def _plot(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("run",), paths=("run", "output"), positional="run")
    if not isinstance(args["log_loss"], bool):
        raise UserError(f"invalid log_loss={args['log_loss']!r}: allowed: true, false")
    run_dir = Path(absolute(args["run"]))
    output = Path(absolute(args["output"])) if args["output"] else run_dir / "curves.png"
    log.info("wrote %s", write_curves(run_dir, output, args["log_loss"]))
    return 0


def main(argv: list[str]) -> int:
    return run_command(_plot, argv, USAGE)
