"""`nettrain eval`: a checkpoint's metrics on its data's val or test split.

The data is rebuilt from the checkpoint's own config (so the val split is the one training
measured), the model from its spec and weights; `nettrain.metrics.evaluate` computes loss and
accuracy exactly as validation did, and scikit-learn the per-class metrics and confusion matrix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from nettrain.config import absolute
from nettrain.errors import UserError
from nettrain.inference import load_model, one_of, parse_args, result_console, run_command

if TYPE_CHECKING:
    from torch import Tensor

    from nettrain.data.spec import DataSpec

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain eval [ckpt=]PATH [split=val|test] [output=DIR] [--json]
                     [device=auto|cpu|cuda] [data.KEY=VALUE ...]
                     [model._target_=PATH] [loss._target_=PATH]

Evaluate a checkpoint (a .pt file, or a run dir for its checkpoints/best.pt) on
the val split (default) or the test split of its data: loss, accuracy,
per-class precision / recall / F1 and the confusion matrix (regression: loss,
RMSE, MAE, R2). The data is rebuilt from the checkpoint's config; data.KEY=VALUE
changes it, e.g. data.root=DIR to evaluate on other files.

A binary classifier decides as training's validation did at the checkpoint's
epoch: by the threshold on its rare class's probability stored in the
checkpoint (see train's threshold=), else by argmax; accuracy, the tables and
the confusion matrix all use that decision.

A checkpoint of your own model, data or loss (a _target_) is rebuilt only when
you name the same model._target_, data._target_ or loss._target_ here: code
named by a checkpoint is never imported on its own.

Writes metrics.json, confusion_matrix.png and a TensorBoard image to output
(default: RUN_DIR/eval/SPLIT). --json prints the metrics as JSON instead of the
tables. The checkpoint may come first without `ckpt=` (a sweep job's dir, whose
name holds `=`, too).

examples:
  nettrain eval outputs/2025-01-31/12-00-00/checkpoints/best.pt
  nettrain eval outputs/2025-01-31/12-00-00 split=test data.root=~/photos-2025
  nettrain eval outputs/multirun/2025-01-31/12-00-00/0_optimizer.lr=0.01 --json
"""

DEFAULTS: dict[str, Any] = {"ckpt": None, "split": "val", "output": None, "device": "auto", "json": False}
SPLITS = ("val", "test")
MAX_CLASSES_SHOWN = 20  # larger confusion matrices go to the PNG only, without numbers in the cells
TOP_CONFUSIONS = 15     # listed instead of a matrix too large to read


@dataclass
class Evaluation:
    split: str
    metrics: dict[str, Any]     # what metrics.json holds
    outputs: Tensor             # model outputs per sample, in loader order (CPU)
    targets: Tensor
    spec: DataSpec
    run_dir: Path


def evaluate_checkpoint(ckpt: str | Path, split: str = "val", data_overrides: dict[str, Any] | None = None,
                        device: str = "auto", confirmed: dict[str, Any] | None = None) -> Evaluation:
    """Metrics of the checkpoint's model on `split` of its data (changed by `data_overrides`).
    `confirmed`: the `model`, `loss` (and `data`, from `data_overrides`) `_target_`s the user names."""
    from nettrain.config import validate
    from nettrain.data import DataContext, build_data
    from nettrain.decision import Decision
    from nettrain.inference import CONFIRM_HOW
    from nettrain.logs import step_bar
    from nettrain.losses import build_loss
    from nettrain.metrics import evaluate
    from nettrain.runtime import Runtime, resolve_precision
    from nettrain.targets import confirm

    one_of("split", split, SPLITS)
    confirmed = {**(confirmed or {}), "data": data_overrides or {}}
    loaded = load_model(ckpt, device, confirmed)
    cfg = loaded.config
    confirm(OmegaConf.to_container(cfg), confirmed, ("data", "loss"), str(loaded.path), CONFIRM_HOW)
    if data_overrides:
        for key in data_overrides:
            if key not in cfg.data:
                raise UserError(f"unknown data.{key}: the checkpoint's data={cfg.data.name} has "
                                f"{', '.join('data.' + k for k in cfg.data)}")
        cfg.data = OmegaConf.merge(cfg.data, data_overrides)
    validate(OmegaConf.create({"data": cfg.data}))  # only data: the run's other paths may be long gone
    t = cfg.trainer
    data = build_data(cfg.data, DataContext(seed=t.seed, device=loaded.device,
                                            eval_batch_size=t.eval_batch_size or 4 * cfg.data.batch_size))
    if data.spec.class_names != loaded.spec.class_names or data.spec.input_shape != loaded.spec.input_shape:
        raise UserError(f"the data does not match the model: it has classes {data.spec.class_names} and inputs "
                        f"{data.spec.input_shape}, the model was trained on {loaded.spec.class_names} and "
                        f"{loaded.spec.input_shape}")
    if data.spec.preprocessing != loaded.spec.preprocessing:
        # e.g. a new CSV: its own statistics would standardize the columns differently from training.
        raise UserError("the data's preprocessing differs from the model's (statistics or normalization of other "
                        "data); score new inputs with nettrain predict, which uses the checkpoint's")
    loader = data.val if split == "val" else data.test
    if loader is None:
        raise UserError(f"data={cfg.data.name} has no test split here; allowed: split=val "
                        "(an image folder gets one from a test/ subfolder)")
    criterion = build_loss(cfg.loss, loaded.spec, data.class_weights).to(loaded.device)
    # The precision training validated with, so val metrics come out as recorded.
    rt = Runtime(device=loaded.device, amp_dtype=resolve_precision(t.precision, loaded.device), channels_last=False)
    with step_bar(f"evaluating {split}", len(loader), samples_per_step=loader.batch_size) as bar:
        summary, outputs, targets = evaluate(loaded.model, loader, criterion, device=loaded.device,
                                             task=loaded.spec.task, autocast=rt.autocast, collect=True,
                                             on_batch=bar.advance)
    if outputs is None:
        raise UserError(f"the {split} split of data={cfg.data.name} is empty")
    metrics: dict[str, Any] = {"checkpoint": str(loaded.path), "split": split, "samples": len(targets),
                               "loss": summary["loss"]}
    if loaded.spec.task == "regression":
        metrics |= regression_metrics(outputs.squeeze(-1), targets)
    else:
        decision = Decision.from_checkpoint(loaded.decision, loaded.spec) if targets.dim() == 1 else None
        if decision is None:
            metrics["accuracy"], predicted = summary["accuracy"], outputs.argmax(-1)
        else:  # binary: decided as validation decided at the checkpoint's epoch (its threshold, or argmax)
            threshold, decided = decision.measure(outputs, targets)
            metrics |= {"accuracy": decided["accuracy"], "positive_class": decision.positive_class, "threshold": threshold,
                        **{k: decided[k] for k in ("precision", "recall", "f1")}}
            predicted = decision.predict(outputs, threshold)
        metrics |= classification_metrics(predicted, targets, loaded.spec.class_names)
    return Evaluation(split, metrics, outputs, targets, loaded.spec, loaded.run_dir)


def classification_metrics(predicted: Tensor, targets: Tensor, class_names: list[str]) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support, their macro averages and the confusion matrix
    (rows: true class, columns: predicted class), of the `predicted` class indices."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

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
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    y, p = targets.double().numpy(), predicted.double().numpy()
    return {"rmse": float(root_mean_squared_error(y, p)), "mae": float(mean_absolute_error(y, p)),
            "r2": float(r2_score(y, p)) if len(y) > 1 else float("nan")}


def write_report(result: Evaluation, output: Path) -> None:
    """metrics.json, the confusion matrix as a PNG and as a TensorBoard image, scalars for TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    from torch.utils.tensorboard import SummaryWriter

    from nettrain.checkpoint import atomic_write_text

    output.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(output))
    for key in ("loss", "accuracy", "macro_f1", "f1", "threshold", "rmse", "mae", "r2"):
        if result.metrics.get(key) is not None:
            writer.add_scalar(f"eval_{result.split}/{key}", result.metrics[key], 0)
    if "confusion_matrix" in result.metrics:
        figure = confusion_figure(result.metrics["confusion_matrix"], result.spec.class_names,
                                  f"confusion matrix: {result.split} split, {result.metrics['samples']} samples")
        figure.savefig(output / "confusion_matrix.png", dpi=120, bbox_inches="tight")
        writer.add_figure(f"eval_{result.split}/confusion_matrix", figure, 0)  # closes the figure
    writer.close()
    atomic_write_text(output / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")


def confusion_figure(matrix: list[list[int]], class_names: list[str], title: str) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(class_names)
    size = min(max(4.0, 0.45 * n + 2), 24.0)
    figure, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, include_values=n <= 30,
        xticks_rotation="vertical" if n > 10 else "horizontal")
    ax.set_title(title)
    return figure


def print_report(result: Evaluation) -> None:
    """The metrics as rich tables on stdout (the command's result; logs go to stderr)."""
    from rich.table import Table

    m, out = result.metrics, result_console()
    summary = Table(title=f"{m['split']} split: {m['samples']} samples", show_header=False)
    if "positive_class" in m:  # binary: what accuracy and the tables below are decided by
        summary.add_row("decision", f"{m['positive_class']} when its probability >= {m['threshold']:.4g}"
                        if m["threshold"] is not None else "argmax")
    for key in ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1", "rmse", "mae", "r2"):
        if key in m:
            summary.add_row(key, f"{m[key]:.2%}" if key == "accuracy" else f"{m[key]:.4f}")
    out.print(summary)
    if "per_class" not in m:
        return
    per_class = Table(title="per class")
    for column in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, c in m["per_class"].items():
        per_class.add_row(name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]))
    out.print(per_class)
    names = result.spec.class_names
    if len(names) <= MAX_CLASSES_SHOWN:
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("")
        for name in names:
            cm.add_column(name, justify="right")
        for i, (name, row) in enumerate(zip(names, m["confusion_matrix"])):
            cm.add_row(name, *(f"[bold green]{v}[/]" if i == j else str(v) for j, v in enumerate(row)))
        out.print(cm)
    elif m["top_confusions"]:
        confusions = Table(title=f"top confusions ({len(names)} classes: the full matrix is in confusion_matrix.png)")
        for column in ("true", "predicted", "count"):
            confusions.add_column(column, justify="right" if column == "count" else "left")
        for c in m["top_confusions"]:
            confusions.add_row(c["true"], c["predicted"], str(c["count"]))
        out.print(confusions)


def _eval(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("ckpt",), paths=("ckpt", "output"), prefixes=("data.", "model.", "loss."),
                      positional="ckpt")
    split = one_of("split", args["split"], SPLITS)
    result = evaluate_checkpoint(args["ckpt"], split, args.get("data"), args["device"],
                                 {"model": args.get("model"), "loss": args.get("loss")})
    output = Path(absolute(args["output"])) if args["output"] else result.run_dir / "eval" / split
    if args["json"] is True:
        print(json.dumps(result.metrics, indent=2))
    else:
        print_report(result)
    write_report(result, output)
    log.info("wrote %s", output / "metrics.json")
    return 0


def main(argv: list[str]) -> int:
    return run_command(_eval, argv, USAGE)
