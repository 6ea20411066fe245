"""`nettrain predict`: classes and probabilities for new inputs, from the checkpoint alone.

Inputs go through the same preprocessing validation used (`load_image` for images, `encode_rows`
for CSV rows, both driven by the checkpoint's spec), in batches. An input that cannot be read is
counted and named on stderr, and the others are still predicted. Results go to stdout: a table,
JSON or CSV.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nettrain.config import absolute
from nettrain.errors import UserError, invalid
from nettrain.inference import Loaded, load_model, one_of, parse_args, result_console, run_command

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain predict [ckpt=]PATH input=FILE|DIR|CSV | text="..."
                        [top_k=N] [format=table|json|csv] [batch_size=64]
                        [device=auto|cpu|cuda] [model._target_=PATH]

Predict the class of each input with its probabilities, using only what the
checkpoint stores (class names, image size, normalization, tabular statistics).
ckpt is a .pt file, or a run dir for its checkpoints/best.pt. input is:
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


@dataclass
class Prediction:
    input: str
    prediction: str | float                  # a class name, or the value for regression
    probabilities: dict[str, float] = field(default_factory=dict)  # every class, most probable first


@dataclass
class Results:
    predictions: list[Prediction]
    failures: list[tuple[str, str]]          # (input, why it could not be read)
    class_names: list[str]
    threshold: float | None = None           # binary: the positive class is predicted when its probability >= this
    positive_class: str | None = None


def predict(ckpt: str | Path, source: str | Path | None, *, batch_size: int = 64, device: str = "auto",
            text: str | None = None, confirmed: dict[str, Any] | None = None) -> Results:
    """Predictions for every readable input under `source` (a file, a folder, or a CSV of rows), or
    for `text` (a model trained on text). `confirmed`: the `model._target_` the user names (see `load_model`)."""
    loaded = load_model(ckpt, device, confirmed)
    if text is not None:
        inputs, encode = _text_input(loaded, text)
        path = Path("text")
    else:
        path = Path(absolute(str(source)))
        if not path.exists():
            raise invalid("input", str(source), "no such file or directory")
        inputs, encode = _inputs(loaded, path, str(source))
    from nettrain.decision import Decision

    decision = Decision.from_checkpoint(loaded.decision, loaded.spec)
    threshold = decision.fixed if decision is not None else None
    results = Results([], [], loaded.spec.class_names, threshold, decision.positive_class if threshold is not None else None)
    from nettrain.logs import step_bar

    # A bar (inputs done, inputs/s, ETA) when there is more than one batch, on a terminal.
    with step_bar("predicting", len(inputs), enabled=len(inputs) > batch_size) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            names, batch = _encode(chunk, encode, results.failures)
            if names:
                results.predictions += _predict_batch(loaded, names, batch, decision)
            bar.advance(len(chunk))
    if not results.predictions:
        if len(inputs) == 1:
            raise UserError(results.failures[0][1])
        raise UserError(f"none of the {len(inputs)} input(s) under {path} could be read "
                        f"(first: {results.failures[0][0]}: {results.failures[0][1]})")
    return results


def _encode(chunk: list[tuple[str, Any]], encode: Callable[[list[Any]], Tensor],
            failures: list[tuple[str, str]]) -> tuple[list[str], Tensor | None]:
    """The readable inputs of `chunk` (names) as one batch; the unreadable ones go to `failures`."""
    try:
        return [name for name, _ in chunk], encode([raw for _, raw in chunk])
    except UserError:  # some input is unreadable: try one at a time to name it, then batch the others
        names, raws = [], []
        for name, raw in chunk:
            try:
                encode([raw])
            except UserError as e:
                failures.append((name, str(e)))
                continue
            names.append(name)
            raws.append(raw)
        return names, encode(raws) if raws else None


def _inputs(loaded: Loaded, path: Path, given: str) -> tuple[list[tuple[str, Any]], Callable[[list[Any]], Tensor]]:
    """(name, raw input) pairs and the function turning raw inputs into a model batch. Names start
    with the input path as `given`, so they read as the user wrote them."""
    import torch

    preprocessing = loaded.spec.preprocessing
    kind = preprocessing.get("kind")
    if kind == "image":
        from nettrain.data.transforms import IMAGE_EXTENSIONS, load_image

        if path.is_dir():
            # Hidden files and folders (.DS_Store, ._photo.jpg, .nettrain_cache) are not inputs.
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            if not files:
                raise invalid("input", str(path),
                              f"no images in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif path.suffix.lower() == ".csv":
            raise invalid("input", str(path), "this model takes images: give an image file or a folder of images")
        else:
            files = [path]
        names = [given if f == path else str(Path(given) / f.relative_to(path)) for f in files]
        return list(zip(names, files)), lambda raws: torch.stack([load_image(f, preprocessing) for f in raws])
    if kind == "tabular":
        from nettrain.data.tabular import encode_rows, read_table

        if path.is_dir() or path.suffix.lower() != ".csv":
            raise invalid("input", str(path), "this model was trained on tabular data: give a .csv file of rows")
        table = read_table(path, list(preprocessing["categories"]))
        try:
            encode_rows(table.head(0), preprocessing)  # a missing column fails every row: say so once
        except UserError as e:
            raise UserError(f"input={given}: {e}") from None
        # Rows are named FILE:LINE (the header is line 1), as the encoder's errors name them.
        return [(f"{given}:{i + 2}", i) for i in range(len(table))], \
            lambda raws: encode_rows(table.iloc[raws], preprocessing)
    if kind == "text":
        from nettrain.data.text import encoder_for, predict_inputs

        return predict_inputs(path, given, preprocessing), encoder_for(preprocessing)
    if "_target_" in loaded.config.data:
        raise UserError(f"{loaded.path} was trained on data._target_={loaded.config.data._target_}, whose config states no "
                        f"data.preprocessing: predict cannot turn files into its inputs (state it as {{kind: image, "
                        f"image_size, channels, mean, std}} in the data config for the next run, or call the model from Python)")
    raise UserError(f"{loaded.path} records no preprocessing (kind={kind!r}): cannot turn files into inputs for it")


def _text_input(loaded: Loaded, text: str) -> tuple[list[tuple[str, Any]], Callable[[list[Any]], Tensor]]:
    """`text="..."`: one input, named by itself."""
    if loaded.spec.preprocessing.get("kind") != "text":
        raise invalid("text", text, "this model was not trained on text: give input=FILE")
    from nettrain.data.text import encoder_for

    return [(text, text)], encoder_for(loaded.spec.preprocessing)


def _predict_batch(loaded: Loaded, names: list[str], batch: Tensor, decision: Any = None) -> list[Prediction]:
    """Predictions for one batch; a binary `decision` (nettrain.decision.Decision) picks the class by its
    threshold, the probabilities stay the softmax ones."""
    import torch

    with torch.inference_mode():
        outputs = loaded.model(batch.to(loaded.device)).float().cpu()
    if loaded.spec.task == "regression":
        return [Prediction(name, float(value)) for name, value in zip(names, outputs.squeeze(-1).tolist())]
    # Softmax for every classification loss: probabilities that sum to 1, ranked as the logits are.
    probabilities = outputs.softmax(-1)
    classes = loaded.spec.class_names
    chosen = decision.predict(outputs, decision.fixed) if decision is not None else outputs.argmax(-1)
    predictions = []
    for name, p, c in zip(names, probabilities, chosen.tolist()):
        order = p.argsort(descending=True).tolist()
        predictions.append(Prediction(name, classes[c], {classes[i]: float(p[i]) for i in order}))
    return predictions


def top(prediction: Prediction, k: int | None) -> dict[str, float]:
    return dict(list(prediction.probabilities.items())[:k]) if k else prediction.probabilities


def write_json(results: Results, top_k: int | None) -> None:
    decided = {"threshold": results.threshold} if results.threshold is not None else {}
    rows = [{"input": p.input, "prediction": p.prediction, **decided,
             **({"probabilities": top(p, top_k)} if p.probabilities else {})} for p in results.predictions]
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")


def write_csv(results: Results) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["input", "prediction", *results.class_names])
    for p in results.predictions:
        writer.writerow([p.input, p.prediction, *(f"{p.probabilities[c]:.6g}" for c in results.class_names)])


def write_table(results: Results, top_k: int | None) -> None:
    from rich.markup import escape
    from rich.table import Table

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
            shown = "  ".join(f"{escape(c)} {v:.1%}" for c, v in top(p, top_k or TABLE_TOP_K).items())
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
