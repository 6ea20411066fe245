"""Loss registry (`loss.name`). Every loss takes the model's outputs and the loader's targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from nettrain.data.spec import DataSpec
from nettrain.errors import invalid


class SoftmaxMSE(nn.Module):
    """Squared error between softmax outputs and one-hot targets: the classic formulation."""

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        one_hot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
        return F.mse_loss(outputs.softmax(-1), one_hot)


class RegressionMSE(nn.Module):
    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs.squeeze(-1), targets.to(outputs.dtype))


class OneHotBCE(nn.Module):
    """Binary cross-entropy on logits, one output per class (class indices become one-hot;
    multi-hot float targets are used as they are, for multi-label data)."""

    def __init__(self, pos_weight: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if targets.dtype == torch.long:
            targets = F.one_hot(targets, outputs.shape[-1])
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), pos_weight=self.pos_weight)


def build_loss(cfg: DictConfig, spec: DataSpec, class_weights: list[float] | None = None) -> nn.Module:
    """The criterion for `cfg.name`, weighted per class when the data asks for it."""
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    if spec.task == "regression":
        if cfg.name != "mse":
            raise invalid("loss", cfg.name, "regression targets need loss=mse")
        return RegressionMSE()
    if cfg.name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    if cfg.name == "mse":
        return SoftmaxMSE()
    if cfg.name == "bce":
        return OneHotBCE(pos_weight=weight)
    raise invalid("loss.name", cfg.name, "allowed: cross_entropy, mse, bce")
