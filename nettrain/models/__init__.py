"""Model registry: every model is a `Net` of a backbone and a head, built from the data's spec.

Shapes (channels, image size, classes, features) come from the `DataSpec`, never from the config.
The backbone/head split is what fine-tuning uses: `model.freeze=backbone` trains only the head,
and a checkpoint with a different number of classes re-initializes only the head.
To add a model, write a function `(cfg, spec) -> Net` in a module here and name it in `MODELS`.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from nettrain.data.spec import DataSpec
from nettrain.errors import invalid
from nettrain.models.net import Net

# model.name -> "module:function" building it (imported only when chosen).
MODELS: dict[str, str] = {
    "mlp": "nettrain.models.net:mlp",
    "cnn": "nettrain.models.vision:cnn",
    "resnet18": "nettrain.models.vision:resnet18",
    "resnet34": "nettrain.models.vision:resnet34",
    "resnet50": "nettrain.models.vision:resnet50",
    "transformer": "nettrain.models.text:transformer",
    "bag": "nettrain.models.text:bag",
    "hf": "nettrain.models.hf:hf",
}


def build_model(cfg: DictConfig, spec: DataSpec) -> Net:
    """The network named by `cfg.name`, shaped for `spec`."""
    if cfg.name not in MODELS:
        raise invalid("model.name", cfg.name, "allowed: " + ", ".join(MODELS))
    module, function = MODELS[cfg.name].split(":")
    return getattr(importlib.import_module(module), function)(cfg, spec)


__all__ = ["MODELS", "Net", "build_model"]
