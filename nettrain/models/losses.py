"""Losses: the registered ones (`loss.name`, config.registry.LOSSES), or any torch.nn loss or your own via
`loss._target_`. Every loss takes the model's outputs and the loader's targets."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from nettrain.config.registry import LOSSES
from nettrain.config.user_code import instantiate, locate
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid

log = logging.getLogger("nettrain")


def _integer(name: str) -> bool:
    try:
        int(name)
    except ValueError:
        return False
    return True


class SoftmaxMSE(nn.Module):
    """Squared error between softmax outputs and one-hot targets: the classic formulation."""

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        one_hot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
        return F.mse_loss(outputs.softmax(-1), one_hot)


class RegressionMSE(nn.Module):
    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        # In float32 whatever the autocast: bf16 targets would be rounded to 3 digits (wear 3.772 -> 3.766),
        # which the model then learns and validation measures against.
        return F.mse_loss(outputs.squeeze(-1).float(), targets.float())


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


class TokenCrossEntropy(nn.Module):
    """A language model's loss: cross-entropy of every position's logits [B, T, V] against the next tokens
    [B, T], in nats per token (softmax and log in float32, whatever the autocast)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten(), label_smoothing=self.label_smoothing)


class TargetLoss(nn.Module):
    """A loss from `loss._target_`: any torch.nn loss, or the user's class or function
    `(outputs, targets) -> scalar tensor`."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], target: str) -> None:
        super().__init__()
        self.fn, self.target = fn, target

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        loss = self.fn(outputs, targets)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise UserError(f"loss._target_={self.target} must return a scalar tensor (one loss for the batch), "
                            f"got {tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
        return loss


def target_loss(cfg: DictConfig, spec: DataSpec, weight: Tensor | None) -> TargetLoss:
    """`cfg._target_`: a class is instantiated (with `num_classes` and the class `weight` where it
    takes them), a function is the loss itself, called with the config's other keys."""
    node = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "name"}
    if not inspect.isclass(locate("loss._target_", node["_target_"])):
        node["_partial_"] = True
    available = {"num_classes": spec.num_classes} | ({"weight": weight} if weight is not None else {})
    return TargetLoss(instantiate("loss", node, available), node["_target_"])


def build_loss(cfg: DictConfig, spec: DataSpec, class_weights: list[float] | None = None) -> nn.Module:
    """The criterion for `cfg.name` (a registered loss, config.registry.LOSSES) or the `_target_`, weighted per
    class when the data asks for it."""
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    if "_target_" in cfg:
        return target_loss(cfg, spec, weight)
    return LOSSES.get(cfg.name).load()(cfg, spec, weight)


def cross_entropy(cfg: DictConfig, spec: DataSpec, weight: Tensor | None) -> nn.Module:
    if spec.task == "lm":
        return TokenCrossEntropy(cfg.label_smoothing)
    if spec.task == "regression":  # the default loss: say what a number to predict is trained with
        log.info("a numeric target (regression): training with loss=mse, cross_entropy is for classes")
        return RegressionMSE()
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def _not_for_language_models(cfg: DictConfig, spec: DataSpec) -> None:
    if spec.task == "lm":
        raise invalid("loss", cfg.name, "a language model (data=text_lm) is trained with loss=cross_entropy")


def mse(cfg: DictConfig, spec: DataSpec, weight: Tensor | None) -> nn.Module:
    _not_for_language_models(cfg, spec)
    if spec.task == "regression":
        return RegressionMSE()
    if spec.preprocessing.get("kind") == "tabular" and all(_integer(c) for c in spec.class_names):
        # A numeric target read as classes (wine quality 3..9): say what mse means here.
        log.warning("loss=mse on a classification target: its classes %s are one-hot targets for the softmax "
                    "outputs (softmax-MSE), not numbers to predict; to predict the number use data.task=regression",
                    ", ".join(spec.class_names))
    return SoftmaxMSE()


def bce(cfg: DictConfig, spec: DataSpec, weight: Tensor | None) -> nn.Module:
    _not_for_language_models(cfg, spec)
    if spec.task == "regression":
        raise invalid("loss", cfg.name, "regression targets need loss=mse")
    return OneHotBCE(pos_weight=weight)
