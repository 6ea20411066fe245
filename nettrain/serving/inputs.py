"""A client's raw inputs turned into model inputs, by the preprocessing the run's `DataSpec` records: images (base64
strings or uploaded bytes) through `data.transforms.load_image`, table rows (objects of column -> value) through
`data.tabular.encode_rows`, texts through the checkpoint's tokenizer (`data.text.encoder_for`), exactly as
`nettrain predict` and validation compute them. A language model takes prompts instead (POST /generate).

Every input is checked on its own before anything reaches the model, so a bad one is answered with one line
naming it (`inputs[2]: ...`) and never spoils a batch shared with other clients. An input becomes one tensor
(an image [C, H, W], a row [F], a text's ids [L]); `collate` joins the inputs of many requests into one batch.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from nettrain.data.spec import DataSpec
from nettrain.data.tabular import FLOAT32_MAX, encode_rows
from nettrain.data.text import encoder_for
from nettrain.data.transforms import load_image
from nettrain.errors import UserError
from nettrain.serving.errors import RequestError, describe_value

# A data: URL's prefix (what a browser's FileReader gives): the base64 after it is the file.
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


class _Bytes(io.BytesIO):
    """An uploaded image for Pillow, shown as nothing in its messages: the error names the input itself."""

    def __repr__(self) -> str:
        return ""


def decode_base64(text: str, where: str) -> bytes:
    """The file a base64 string holds (standard or URL-safe alphabet, line breaks, missing padding or a
    data: URL prefix are all accepted)."""
    body = "".join(_DATA_URL.sub("", text, count=1).split())
    urlsafe = "-" in body or "_" in body
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if urlsafe else None, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{where}: not a base64 string ({e}); this model takes images as base64 strings of "
                           f"image files") from None
    if not data:
        raise RequestError(f"{where}: an empty image")
    return data


class ImageInputs:
    kind = "image"

    def __init__(self, spec: DataSpec) -> None:
        self.preprocessing = spec.preprocessing

    def parse(self, raw: Any, where: str) -> bytes:
        if isinstance(raw, bytes):
            if not raw:
                raise RequestError(f"{where}: an empty file")
            return raw
        if not isinstance(raw, str):
            raise RequestError(f"{where}: this model takes images: a base64 string of an image file, not "
                               f"{describe_value(raw)}")
        return decode_base64(raw, where)

    def encode(self, items: list[bytes], names: list[str]) -> list[Tensor]:
        tensors = []
        for data, where in zip(items, names):
            try:
                tensors.append(load_image(_Bytes(data), self.preprocessing))
            except UserError as e:  # "cannot read image : ..." with the input's name where the file's would be
                raise RequestError(str(e).replace("cannot read image :", f"{where}: cannot read the image:", 1).rstrip()) from None
        return tensors

    def collate(self, tensors: list[Tensor]) -> Tensor:
        return torch.stack(tensors)

    def record(self, item: bytes) -> str:
        """The image as a feedback record keeps it: base64 of the file."""
        return base64.b64encode(item).decode("ascii")

    def describe(self) -> dict[str, Any]:
        p = self.preprocessing
        return {"kind": "image", "send": "base64 strings of image files (PNG, JPEG, ...), or multipart file uploads",
                "image_size": p["image_size"], "channels": p["channels"], "mean": p["mean"], "std": p["std"],
                "resize": "shorter side to image_size, centre square crop (the server does it)"}


class TableInputs:
    kind = "tabular"

    def __init__(self, spec: DataSpec) -> None:
        self.preprocessing = spec.preprocessing
        self.features: list[str] = list(spec.preprocessing["features"])
        self.categories: dict[str, list[str]] = dict(spec.preprocessing["categories"])
        self._known = set(self.features)

    def parse(self, raw: Any, where: str) -> dict[str, Any]:
        """The row with its values checked and typed: floats (NaN for null) and strings (None for null)."""
        if not isinstance(raw, dict):
            raise RequestError(f"{where}: this model takes table rows: an object of column -> value, not {describe_value(raw)}")
        unknown = [c for c in raw if c not in self._known]
        if unknown:
            raise RequestError(f"{where}: unknown column {unknown[0]!r}; the model takes: {', '.join(self.features)}")
        missing = [c for c in self.features if c not in raw]
        if missing:
            raise RequestError(f"{where}: no column {missing[0]!r} (give null for a missing value); the model needs: "
                               f"{', '.join(self.features)}")
        return {c: self._category(raw[c], c, where) if c in self.categories else self._number(raw[c], c, where)
                for c in self.features}

    @staticmethod
    def _number(value: Any, column: str, where: str) -> float:
        if value is None:
            return math.nan  # a missing number: the training mean, as in a CSV file
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or math.isnan(number):
            raise RequestError(f"{where}: column {column!r} takes a number (or null), not {value!r}")
        if abs(number) > FLOAT32_MAX:
            raise RequestError(f"{where}: column {column!r} holds {number:g}: values must be finite and within "
                               f"+-{FLOAT32_MAX:.3g}")
        return number

    @staticmethod
    def _category(value: Any, column: str, where: str) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (int, float, bool)):
            return str(value)  # as a CSV file holds it; an unseen category encodes as all zeros
        raise RequestError(f"{where}: column {column!r} takes a category (a string or null), not {describe_value(value)}")

    def encode(self, items: list[dict[str, Any]], names: list[str]) -> list[Tensor]:
        table = pd.DataFrame({c: pd.Series([row[c] for row in items], dtype=object if c in self.categories else float)
                              for c in self.features})
        return list(encode_rows(table, self.preprocessing).unbind(0))

    def collate(self, tensors: list[Tensor]) -> Tensor:
        return torch.stack(tensors)

    def record(self, item: dict[str, Any]) -> dict[str, Any]:
        """The row as a feedback record keeps it: JSON values, null for a missing one."""
        return {c: None if isinstance(v, float) and math.isnan(v) else v for c, v in item.items()}

    def describe(self) -> dict[str, Any]:
        return {"kind": "tabular", "send": "objects of column -> value (null for a missing value)",
                "columns": self.features, "numeric": [c for c in self.features if c not in self.categories],
                "categorical": self.categories}


class TextInputs:
    kind = "text"

    def __init__(self, spec: DataSpec) -> None:
        self.preprocessing = spec.preprocessing
        self._encode = encoder_for(spec.preprocessing)
        self.pad_id = int(spec.preprocessing["pad_id"])

    def parse(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str):
            raise RequestError(f"{where}: this model takes texts: a string, not {describe_value(raw)}")
        return raw

    def encode(self, items: list[str], names: list[str]) -> list[Tensor]:
        tensors = []
        for text, where in zip(items, names):
            try:
                tensors.append(self._encode([text])[0])  # one text: its ids, unpadded
            except UserError as e:
                raise RequestError(f"{where}: {e}") from None
        return tensors

    def collate(self, tensors: list[Tensor]) -> Tensor:
        """Texts of many requests padded to the longest (on the right, as the tokenizer pads a batch)."""
        batch = torch.full((len(tensors), max(len(t) for t in tensors)), self.pad_id, dtype=tensors[0].dtype)
        for row, ids in zip(batch, tensors):
            row[:len(ids)] = ids
        return batch

    def record(self, item: str) -> str:
        return item

    def describe(self) -> dict[str, Any]:
        p = self.preprocessing
        return {"kind": "text", "send": "strings", "max_length": p["max_length"],
                "truncation": f"texts longer than {p['max_length']} tokens are cut there", "text_column": p["text_column"]}


class PromptInputs:
    """A language model's: it takes a prompt to continue (POST /generate), not inputs to predict."""

    kind = "text_lm"

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec

    def parse(self, raw: Any, where: str) -> str:
        raise RequestError('this model writes text: POST /generate {"prompt": "...", "max_new_tokens": 200} '
                           '(GET /info says what it takes)')

    def describe(self) -> dict[str, Any]:
        p = self.spec.preprocessing
        vocabulary = f"{p['vocab_size']} characters" if p.get("vocabulary") == "char" else f"{p['vocab_size']} BPE tokens"
        return {"kind": "text_lm", "send": 'POST /generate {"prompt": "...", "max_new_tokens": N, "temperature": T, '
                                           '"top_k": K, "seed": S, "stream": false}',
                "vocabulary": vocabulary, "context": self.spec.input_shape[0]}


Inputs = ImageInputs | TableInputs | TextInputs | PromptInputs
KINDS: dict[str, type[ImageInputs] | type[TableInputs] | type[TextInputs] | type[PromptInputs]] = {
    "image": ImageInputs, "tabular": TableInputs, "text": TextInputs, "text_lm": PromptInputs}


def inputs_for(spec: DataSpec, source: str) -> Inputs:
    """How this model's raw inputs are read, from its spec's preprocessing (`source`: the model file, for errors)."""
    kind = spec.preprocessing.get("kind")
    if kind not in KINDS:
        raise UserError(f"{source} records no preprocessing a server can use (kind={kind!r}; a data._target_ run "
                        f"states it as data.preprocessing): cannot turn requests into its inputs")
    return KINDS[kind](spec)
