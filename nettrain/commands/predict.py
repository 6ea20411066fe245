"""`nettrain predict`: classes and probabilities for new inputs, from the checkpoint alone (inference.predict);
the results to stdout as a table, JSON or CSV, the inputs that could not be read named on stderr."""

from __future__ import annotations

import csv
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from nettrain.commands.args import parse_args, result_console, run_command
from nettrain.errors import UserError, invalid, one_of

if TYPE_CHECKING:
    from nettrain.inference.predict import Results

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain predict [ckpt=]PATH input=FILE|DIR|CSV | text="..."
                        [top_k=N] [format=table|json|csv] [batch_size=64]
                        [device=auto|cpu|cuda] [model._target_=PATH]

Predict the class of each input with its probabilities, using only what the
checkpoint stores (class names, image size, normalization, tabular statistics).
ckpt is a .pt file, a run dir for its checkpoints/best.pt, or an exported .onnx
file with its .json beside it (run in onnxruntime). input is:
  an image, or a folder of images (searched recursively);
  for a model trained on a table, a CSV file whose rows are predicted (each
  named FILE:LINE, the header being line 1);
  for a model trained on text (data=text), a file of one text per line, or a
  .csv/.tsv/.jsonl file with the training text column; text="..." predicts one.
Unreadable inputs are reported on stderr and skipped. A binary classifier
trained with a decision threshold (train's threshold=) predicts its rare class
when that class's probability reaches the threshold stored in the checkpoint;
the probabilities shown are the softmax ones.

  top_k=N       the N most probable classes per input (default: 3 in the
                table, all in JSON)
  format=table  a table on stdout (default); json: a list of {"input",
                "prediction", "probabilities": {class: p}}; csv: input,
                prediction, one column per class. Only the results go to
                stdout; logs and errors go to stderr.
  model._target_=PATH
                a checkpoint of your own model is rebuilt only when you name
                its model._target_ here: code named by a checkpoint is never
                imported on its own.

examples:
  nettrain predict outputs/2025-01-31/12-00-00 input=photo.jpg
  nettrain predict outputs/2025-01-31/12-00-00 input=photos/ format=json
  nettrain predict outputs/2025-01-31/12-00-00 input=new_rows.csv format=csv
  nettrain predict outputs/2025-01-31/12-00-00 text="my card was swallowed"
"""

DEFAULTS: dict[str, Any] = {"ckpt": None, "input": None, "text": None, "top_k": None, "format": "table", "batch_size": 64,
                            "device": "auto"}
FORMATS = ("table", "json", "csv")
TABLE_TOP_K = 3
FAILURES_SHOWN = 20


def write_json(results: Results, top_k: int | None) -> None:
    decided = {"threshold": results.threshold} if results.threshold is not None else {}
    rows = [{"input": p.input, "prediction": p.prediction, **decided,
             **({"probabilities": p.top(top_k)} if p.probabilities else {})} for p in results.predictions]
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")


def write_csv(results: Results) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["input", "prediction", *results.class_names])
    for p in results.predictions:
        writer.writerow([p.input, p.prediction, *(f"{p.probabilities[c]:.6g}" for c in results.class_names)])


def write_table(results: Results, top_k: int | None) -> None:
    table = Table()
    table.add_column("input", overflow="fold")
    table.add_column("prediction")
    regression = not results.class_names
    if not regression:
        table.add_column("probabilities")
    for p in results.predictions:
        if regression:
            table.add_row(escape(p.input), f"{p.prediction:.6g}")
        else:
            shown = "  ".join(f"{escape(c)} {v:.1%}" for c, v in p.top(top_k or TABLE_TOP_K).items())
            # A binary model deciding by a threshold says so: "failure 31%" may well be predicted failure.
            decided = f" (threshold {results.threshold:.2g})" if results.threshold is not None else ""
            table.add_row(escape(p.input), escape(str(p.prediction)) + decided, shown)
    result_console().print(table)


def report_failures(failures: list[tuple[str, str]], total: int) -> None:
    """Every unreadable input named on stderr (the first FAILURES_SHOWN of them) and counted."""
    if not failures:
        return
    log.warning("%d of %d input(s) could not be read and were skipped:", len(failures), total)
    for name, why in failures[:FAILURES_SHOWN]:
        log.warning("  %s", why if name in why else f"{name}: {why}")
    if len(failures) > FAILURES_SHOWN:
        log.warning("  ... and %d more", len(failures) - FAILURES_SHOWN)


def _predict(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("ckpt",), paths=("ckpt", "input", "text"), prefixes=("model.",),
                      positional="ckpt")
    if args["input"] is None and args["text"] is None:
        raise UserError('missing input=FILE|DIR (or text="..." for a model trained on text; see --help)')
    if args["input"] is not None and args["text"] is not None:
        raise UserError('give input=FILE|DIR or text="...", not both')
    one_of("format", args["format"], FORMATS)
    for key in ("top_k", "batch_size"):
        value = args[key]
        if key == "top_k" and value is None:
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise invalid(key, value, "must be an integer >= 1")
    from nettrain.inference.predict import predict  # torch: once the arguments are parsed

    results = predict(args["ckpt"], args["input"], batch_size=args["batch_size"], device=args["device"], text=args["text"],
                      confirmed={"model": args.get("model")})
    total = len(results.predictions) + len(results.failures)
    report_failures(results.failures, total)
    if args["format"] == "json":
        write_json(results, args["top_k"])
    elif args["format"] == "csv":
        write_csv(results)
    else:
        write_table(results, args["top_k"])
    log.info("predicted %d input(s)%s", len(results.predictions),
             f", {len(results.failures)} unreadable" if results.failures else "")
    return 0


def main(argv: list[str]) -> int:
    return run_command(_predict, argv, USAGE)
