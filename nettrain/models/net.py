"""The shape every nettrain model has: a backbone and a head, so fine-tuning can freeze one and
re-initialize the other (and, for tables, a memory of the training rows). Also the MLP, which takes any
input flattened (tables, small images)."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from nettrain.data.spec import DataSpec
from nettrain.models.memory import Memory

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
}


class Net(nn.Module):
    """backbone -> features -> head -> outputs (logits, or values for regression), plus the votes of
    the remembered training rows when the model has a memory."""

    def __init__(self, backbone: nn.Module, features: int, num_outputs: int, dropout: float,
                 convolutional: bool, memory: Memory | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_outputs))
        self.memory = memory
        self.convolutional = convolutional  # benefits from channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.backbone(x))
        return out if self.memory is None else self.memory(x, out)


def mlp(cfg: DictConfig, spec: DataSpec) -> Net:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(spec.input_shape)
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation](), nn.Dropout(cfg.dropout)]
        width = hidden
    memory = Memory(math.prod(spec.input_shape), spec.num_classes, spec.task == "regression") if cfg.get("memory") else None
    # The last hidden layer's dropout is the head's own.
    return Net(nn.Sequential(*layers[:-1]), width, spec.num_classes, cfg.dropout, convolutional=False, memory=memory)
