"""Predictions for new inputs from a checkpoint alone: images, a folder of them, CSV rows or texts, each turned
into a model input by the same preprocessing validation used (`load_image` for images, `encode_rows` for rows,
the tokenizer for texts, all driven by the checkpoint's spec), in batches. An input that cannot be read is
named with why, and the others are still predicted. `nettrain predict` and `nettrain serve` use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nettrain.config.paths import absolute
from nettrain.data.tabular import encode_rows, read_table
from nettrain.data.text import encoder_for, predict_inputs
from nettrain.data.transforms import IMAGE_EXTENSIONS, load_image
from nettrain.errors import UserError, invalid
from nettrain.inference.decision import Decision
from nettrain.inference.load import Loaded, load_model
from nettrain.records.console import step_bar


@dataclass
class Prediction:
    input: str
    prediction: str | float                  # a class name, or the value for regression
    probabilities: dict[str, float] = field(default_factory=dict)  # every class, most probable first

    def top(self, k: int | None) -> dict[str, float]:
        """The `k` most probable classes (all when k is None)."""
        return dict(list(self.probabilities.items())[:k]) if k else self.probabilities


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
    if loaded.spec.task == "lm":
        raise UserError(f"{loaded.path} is a language model: it writes text after a prompt, it predicts no class "
                        f"(nettrain generate {ckpt} prompt=\"...\")")
    if text is not None:
        inputs, encode = _text_input(loaded, text)
        path = Path("text")
    else:
        path = Path(absolute(str(source)))
        if not path.exists():
            raise invalid("input", str(source), "no such file or directory")
        inputs, encode = _inputs(loaded, path, str(source))
    decision = Decision.from_checkpoint(loaded.decision, loaded.spec)
    threshold = decision.fixed if decision is not None else None
    results = Results([], [], loaded.spec.class_names, threshold, decision.positive_class if threshold is not None else None)
    # A bar (inputs done, inputs/s, ETA) when there is more than one batch, on a terminal.
    with step_bar("predicting", len(inputs), enabled=len(inputs) > batch_size) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            names, batch = _encode(chunk, encode, results.failures)
            if names:
                results.predictions += predict_batch(loaded, names, batch, decision)
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
    preprocessing = loaded.spec.preprocessing
    kind = preprocessing.get("kind")
    if kind == "image":
        if path.is_dir():
            # Hidden files and folders (.DS_Store, ._photo.jpg) are not inputs.
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
    return [(text, text)], encoder_for(loaded.spec.preprocessing)


def predict_batch(loaded: Loaded, names: list[str], batch: Tensor, decision: Any = None) -> list[Prediction]:
    """Predictions for one batch; a binary `decision` (nettrain.inference.decision.Decision) picks the class by its
    threshold, the probabilities stay the softmax ones."""
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
