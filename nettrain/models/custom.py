"""Your own model: a `model` config with a `_target_` (any class or function returning an nn.Module).

    # myconf/model/tiny.yaml            nettrain train --config-dir myconf model=tiny
    _target_: tinynet.TinyNet
    width: 32

The data's shapes are passed by name where the callable's signature asks for them (`data_arguments`),
and `model.dropout` where it takes one. A module with `backbone` and `head` submodules is used as it
is, so fine-tuning can freeze the one and re-initialize the other; any other module is trained whole
(wrapped in `Whole`), and `model.freeze=backbone` says it cannot be split.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from nettrain.config.registry import MODELS
from nettrain.config.user_code import instantiate
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError

# nettrain's own model keys: read by nettrain (fine-tuning), never passed to the user's callable.
NETTRAIN_KEYS = MODELS.user_keys


def data_arguments(spec: DataSpec) -> dict[str, Any]:
    """What the data tells a model, by the argument names models commonly use for it."""
    shape = list(spec.input_shape)
    args: dict[str, Any] = {"num_classes": spec.num_classes, "input_shape": shape}
    if spec.is_image:
        channels, height, width = shape
        args |= {"in_channels": channels, "in_chans": channels, "image_size": height if height == width else [height, width]}
    elif len(shape) == 1:
        args |= {"num_features": shape[0], "in_features": shape[0]}
    if spec.preprocessing.get("vocab_size"):
        args["vocab_size"] = spec.preprocessing["vocab_size"]
    return args


class Whole(nn.Module):
    """A user model without a backbone/head split: trained, evaluated and exported as one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.convolutional = is_convolutional(net)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def is_convolutional(module: nn.Module) -> bool:
    """Whether channels-last memory helps it: it convolves images (more than a patch embedding)."""
    return sum(isinstance(m, nn.Conv2d) for m in module.modules()) > 1


def build(cfg: DictConfig, spec: DataSpec) -> nn.Module:
    node = OmegaConf.to_container(cfg, resolve=True)
    options = {k: v for k, v in node.items() if k not in NETTRAIN_KEYS}
    available = data_arguments(spec)
    required: tuple[str, ...] = ()
    if node.get("dropout") is not None:
        options["dropout"] = node["dropout"]
        required = ("dropout",)
    net = instantiate("model", options, available, required=required)
    if not isinstance(net, nn.Module):
        raise UserError(f"model._target_={node['_target_']} returned a {type(net).__name__}, not a torch.nn.Module")
    if isinstance(getattr(net, "backbone", None), nn.Module) and isinstance(getattr(net, "head", None), nn.Module):
        if not hasattr(net, "convolutional"):
            net.convolutional = is_convolutional(net)
        return net
    return Whole(net)
