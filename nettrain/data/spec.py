"""What a model and every later command need to know about the data, stored in each checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
        return cls(**d)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def char_level(self) -> bool:
        """A language model whose tokens are characters: its loss in bits is bits per character."""
        return self.preprocessing.get("vocabulary") == "char"
