"""Test-time augmentation (`trainer.tta`): the model's outputs averaged over each image and its
horizontal mirror. Validation, `nettrain eval`, `predict` and `export` see the model through it;
training never does.

The logits are averaged, not the softmax probabilities: every consumer reads logits (the loss at
validation, predict's softmax, a multi-label model's sigmoid, the exported model's documented
outputs), and the mean of two logit vectors is one, whatever the loss. Its softmax is the two
views' normalized geometric mean of probabilities; it ranks classes as the arithmetic mean does
whenever the views agree and differs only in how a confident view outweighs an unsure one.
"""

from __future__ import annotations

import torch
from torch import nn

from nettrain.data.spec import DataSpec
from nettrain.errors import invalid

CHOICES = (None, "flip")


class FlipAverage(nn.Module):
    """`model` on each image and its left-right mirror, in one batch of twice the size; the mean of the two."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        both = self.model(torch.cat([x, x.flip(-1)]))
        return (both[:n] + both[n:]) / 2  # slices, not chunk(2): the exported batch size stays dynamic


def with_tta(model: nn.Module, tta: str | None, spec: DataSpec) -> nn.Module:
    """`model` as evaluation should see it under `trainer.tta` (itself when null)."""
    if tta is None:
        return model
    if tta not in CHOICES:
        raise invalid("trainer.tta", tta, "allowed: null, flip")
    if not spec.is_image:
        raise invalid("trainer.tta", tta, f"mirrors images, but the data has input shape {spec.input_shape}; "
                                          f"allowed for this data: null")
    return FlipAverage(model)
