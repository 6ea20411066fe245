"""`nettrain eval`: a checkpoint's metrics on its data's val or test split.

The data is rebuilt from the checkpoint's own config (so the val split is the one training
measured), the model from its spec and weights; `nettrain.evaluation.metrics.evaluate` computes loss and
accuracy exactly as validation did, and scikit-learn the per-class metrics and confusion matrix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from nettrain.commands.args import parse_args, result_console, run_command
from nettrain.config.paths import absolute
from nettrain.errors import one_of

if TYPE_CHECKING:
    from nettrain.evaluation.checkpoint import Evaluation

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain eval [ckpt=]PATH [split=val|test] [output=DIR] [--json]
                     [device=auto|cpu|cuda] [data.KEY=VALUE ...]
                     [model._target_=PATH] [loss._target_=PATH]

Evaluate a checkpoint (a .pt file, a run dir for its checkpoints/best.pt, or
an exported .onnx file with its .json, run in onnxruntime) on the val split
(default) or the test split of its data: loss, accuracy, per-class precision /
recall / F1 and the confusion matrix (regression: loss, RMSE, MAE, R2; a
language model: loss in nats per token, bits per character, perplexity,
next-token accuracy). The data is rebuilt from the checkpoint's (or the .json's)
config; data.KEY=VALUE changes it, e.g. data.root=DIR to evaluate on other
files (a language model reads another text with its own vocabulary:
data.path=other.txt measures its last 10 %, split=test data.test_path=other.txt
all of it).

A binary classifier decides as training's validation did at the checkpoint's
epoch: by the threshold on its rare class's probability stored in the
checkpoint (see train's threshold=), else by argmax; accuracy, the tables and
the confusion matrix all use that decision.

A checkpoint of your own model, data or loss (a _target_) is rebuilt only when
you name the same model._target_, data._target_ or loss._target_ here: code
named by a checkpoint is never imported on its own.

Writes metrics.json, confusion_matrix.png and a TensorBoard image to output
(default: RUN_DIR/eval/SPLIT; an exported file's: RUN_DIR/eval/FILE/SPLIT, its
own; on other data, SPLIT-NAME, named by the data.KEY=VALUE given, never over
the report of the run's own data). --json prints the metrics as JSON instead of
the tables. The checkpoint may come first without `ckpt=` (a sweep job's dir,
whose name holds `=`, too).

examples:
  nettrain eval outputs/2025-01-31/12-00-00/checkpoints/best.pt
  nettrain eval outputs/2025-01-31/12-00-00 split=test data.root=~/photos-2025
  nettrain eval outputs/multirun/2025-01-31/12-00-00/0_optimizer.lr=0.01 --json
"""

DEFAULTS: dict[str, Any] = {"ckpt": None, "split": "val", "output": None, "device": "auto", "json": False}
SPLITS = ("val", "test")
MAX_CLASSES_SHOWN = 20  # larger confusion matrices go to the PNG only, without numbers in the cells


def print_report(result: Evaluation) -> None:
    """The metrics as rich tables on stdout (the command's result; logs go to stderr)."""
    m, out = result.metrics, result_console()
    amount = f"{m['tokens']:,} tokens" if "tokens" in m else f"{m['samples']} samples"  # a language model's: tokens
    summary = Table(title=f"{m['split']} split: {amount}", show_header=False)
    if "positive_class" in m:  # binary: what accuracy and the tables below are decided by
        summary.add_row("decision", f"{m['positive_class']} when its probability >= {m['threshold']:.4g}"
                        if m["threshold"] is not None else "argmax")
    for key in ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1", "rmse", "mae", "r2", "bpc", "perplexity"):
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


def default_output(model_file: Path, run_dir: Path, split: str, other_data: dict[str, Any] | None = None) -> Path:
    """RUN_DIR/eval/SPLIT for a checkpoint; an exported file's figures beside them, never over them; on other data
    (data.KEY=VALUE that differ from the run's) SPLIT-NAME, named by them, never over the run's own report."""
    from nettrain.inference.exported import is_exported  # numpy and torch: once the arguments are parsed

    name = f"{split}-{data_name(other_data)}" if other_data else split
    return run_dir / "eval" / model_file.name / name if is_exported(model_file) else run_dir / "eval" / name


def data_name(changes: dict[str, Any]) -> str:
    """A folder name for data.KEY=VALUE changes: their values' last path parts (`photos-2025`), then a hash of them
    all, so two folders of the same name elsewhere get two reports."""
    shown = "_".join(Path(str(v)).name or str(v) for v in changes.values())
    digest = hashlib.sha256(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{re.sub(r'[^A-Za-z0-9._=-]+', '_', shown)[:48]}-{digest}"


def _eval(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("ckpt",), paths=("ckpt", "output"), prefixes=("data.", "model.", "loss."),
                      positional="ckpt")
    split = one_of("split", args["split"], SPLITS)
    # The library (torch) only once the arguments are parsed: --help and argument errors answer at once.
    from nettrain.evaluation.checkpoint import evaluate_checkpoint
    from nettrain.evaluation.report import write_report

    result = evaluate_checkpoint(args["ckpt"], split, args.get("data"), args["device"],
                                 {"model": args.get("model"), "loss": args.get("loss")})
    output = Path(absolute(args["output"])) if args["output"] else \
        default_output(Path(absolute(args["ckpt"])), result.run_dir, split, result.other_data)
    if args["json"] is True:
        print(json.dumps(result.metrics, indent=2))
    else:
        print_report(result)
    write_report(result, output)
    log.info("wrote %s", output / "metrics.json")
    return 0


def main(argv: list[str]) -> int:
    return run_command(_eval, argv, USAGE)
