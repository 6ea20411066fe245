"""Model registry: every model is built from the data's spec.

Shapes (channels, image size, classes, features) come from the `DataSpec`, never from the config.
nettrain's models are a `Net` of a backbone and a head; that split is what fine-tuning uses:
`model.freeze=backbone` trains only the head, and a checkpoint with a different number of classes
re-initializes only the head. A model config with a `_target_` is the user's own (`custom`).
To add a model, write a function `(cfg, spec) -> Net` in a module here and name it in `MODELS`.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig
from torch import nn

from nettrain.data import Data
from nettrain.data.spec import DataSpec
from nettrain.errors import invalid
from nettrain.models.memory import memory_of
from nettrain.models.net import Net

# The models whose `model.pretrained=imagenet` is torchvision's ImageNet weights.
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50")

# model.name -> "module:function" building it (imported only when chosen).
MODELS: dict[str, str] = {
    "mlp": "nettrain.models.net:mlp",
    "cnn": "nettrain.models.vision:cnn",
    "resnet18": "nettrain.models.vision:resnet18",
    "resnet34": "nettrain.models.vision:resnet34",
    "resnet50": "nettrain.models.vision:resnet50",
    "inception_v3": "nettrain.models.vision:inception_v3",
    "googlenet": "nettrain.models.vision:googlenet",
    "timm": "nettrain.models.zoo:timm_model",
    "transformer": "nettrain.models.text:transformer",
    "bag": "nettrain.models.text:bag",
    "hf": "nettrain.models.hf:hf",
}


def build_model(cfg: DictConfig, spec: DataSpec) -> nn.Module:
    """The network `cfg` names (by `name`, or the user's `_target_`), shaped for `spec`."""
    if "_target_" in cfg:
        from nettrain.models import custom

        return custom.build(cfg, spec)
    if cfg.get("name") not in MODELS:
        raise invalid("model.name", cfg.get("name"), "allowed: " + ", ".join(MODELS) + ", or a _target_ (your own model)")
    module, function = MODELS[cfg.name].split(":")
    return getattr(importlib.import_module(module), function)(cfg, spec)


def build_trainable(cfg: DictConfig, data: Data) -> nn.Module:
    """The network a run trains on `data`: built for its spec, started from the weights `init_from` or
    `pretrained` name and frozen as `freeze` says, its memory (if any) holding the training rows."""
    model = build_model(cfg, data.spec)
    if cfg.get("init_from") or cfg.get("pretrained") or cfg.get("freeze"):
        from nettrain.finetune import prepare

        prepare(model, cfg, data.spec)
    memory = memory_of(model)
    if memory is not None:  # after init_from: a fine-tuned model remembers its own data
        if data.rows is None:
            raise invalid("model.memory", True, "it remembers the rows of a table (data=csv), and this data has "
                                                "none; allowed: false")
        memory.remember(*data.rows)
    return model


def describe(cfg: DictConfig | dict) -> str:
    """The model a config builds, for messages and records: `cnn`, `timm:convnext_nano`, `mypkg.nets.TinyNet`."""
    if "_target_" in cfg:
        return str(cfg["_target_"])
    if cfg.get("name") == "timm":
        return f"timm:{cfg.get('arch')}"
    return str(cfg.get("name"))


def before_data(cfg: DictConfig) -> None:
    """What a run checks or fetches for its model before any data is read: the user's `_target_`s
    import (a missing module fails at once), a pretrained timm model's weights are in the cache
    (setting the data's normalization and image size to theirs), and so are a ResNet's ImageNet
    weights (`model.pretrained=imagenet`); image data left at `auto` takes the preprocessing of
    the weights the model starts from."""
    from nettrain.targets import GROUPS, locate

    for group in GROUPS:
        target = cfg.get(group, {}).get("_target_")
        if target is not None:
            locate(f"{group}._target_", target)
    if "_target_" not in cfg.model and cfg.model.get("name") == "timm":
        from nettrain.models import zoo

        zoo.before_data(cfg)
    elif "_target_" not in cfg.model and cfg.model.get("pretrained") == "imagenet" \
            and cfg.model.get("name") in IMAGENET_MODELS:
        from nettrain.finetune import fetch_imagenet

        fetch_imagenet(cfg.model.name)
    _preprocessing_from_weights(cfg)


def _preprocessing_from_weights(cfg: DictConfig) -> None:
    """Image data left at `auto` is prepared as the weights the model starts from were trained:
    ImageNet's normalization for `model.pretrained`, a nettrain checkpoint's own for `model.init_from`."""
    from nettrain.data.image_defaults import IMAGENET_MEAN, IMAGENET_STD, adopt

    if cfg.model.get("init_from"):
        from nettrain.checkpoint import load_checkpoint
        from nettrain.config import absolute

        # mmap: only the spec is read here; finetune.init_from reads the weights once, later.
        pre = load_checkpoint(absolute(str(cfg.model.init_from)), mmap=True)["spec"].get("preprocessing", {})
        if pre.get("kind") == "image":
            adopt(cfg.data, {k: pre[k] for k in ("channels", "image_size", "mean", "std")},
                  f"as {cfg.model.init_from} was trained")
    elif cfg.model.get("pretrained") and cfg.model.get("name") != "timm":
        adopt(cfg.data, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, "ImageNet's, for model.pretrained")


__all__ = ["MODELS", "Net", "before_data", "build_model", "describe"]
