"""What a model and every later command need to know about the data, stored in each checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nettrain.config.registry import MAX_IMAGE_SIZE
from nettrain.errors import UserError


@dataclass
class DataSpec:
    """The data's shape and meaning, independent of where it came from.

    `preprocessing` is everything needed to turn a raw input (an image file, a CSV row) into a
    model input, so predict and export need nothing but the checkpoint. Its `kind` is `image`
    (keys: image_size, channels, mean, std), `tabular` (keys: features, numeric, categories,
    fill), `text` (a tokenizer) or `text_lm` (a language model's vocabulary: chars, or a BPE tokenizer);
    plain Python types only, so checkpoints load with `weights_only=True`.
    """

    input_shape: list[int]              # [C, H, W] for images, [F] for tabular rows, [block] for a language model
    num_classes: int                    # model outputs: classes, 1 for regression, the vocabulary's size (lm)
    class_names: list[str]              # empty for regression and lm
    task: str = "classification"        # classification | regression | lm (next-token prediction)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        """The spec a checkpoint (or an exported file's .json) stores; one that no training wrote (a shape that is
        not positive integers, images larger than training allows) is one line, before anything is allocated."""
        try:
            spec = cls(**d)
        except TypeError as e:
            raise UserError(f"not a data spec nettrain wrote: {e}") from None
        shape, pre = spec.input_shape, spec.preprocessing
        if not (isinstance(shape, list) and shape and all(isinstance(n, int) and 0 < n <= 2**24 for n in shape)):
            raise UserError(f"invalid input_shape={shape!r} in the data spec: must be a list of positive integers")
        if isinstance(pre, dict) and pre.get("kind") == "image":
            size, channels = pre.get("image_size"), pre.get("channels")
            if not (isinstance(size, int) and 0 < size <= MAX_IMAGE_SIZE) or channels not in (1, 3):
                raise UserError(f"invalid image preprocessing in the data spec: image_size={size!r} (1-{MAX_IMAGE_SIZE}), "
                                f"channels={channels!r} (1 or 3)")
        return spec

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def char_level(self) -> bool:
        """A language model whose tokens are characters: its loss in bits is bits per character."""
        return self.preprocessing.get("vocabulary") == "char"
