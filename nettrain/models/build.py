"""Models built from the data's spec: the registered family a config names (config.registry.MODELS), or the
user's own `_target_` (models.custom).

Shapes (channels, image size, classes, features) come from the `DataSpec`, never from the config. nettrain's
models are a `Net` of a backbone and a head (models.net); that split is what fine-tuning uses
(models.weights): `model.freeze=backbone` trains only the head, and a checkpoint with a different number of
classes re-initializes only the head.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from nettrain.config.paths import absolute
from nettrain.config.registry import MODELS
from nettrain.config.user_code import GROUPS, locate
from nettrain.data.base import Data
from nettrain.data.image_defaults import IMAGENET_MEAN, IMAGENET_STD, adopt
from nettrain.data.spec import DataSpec
from nettrain.errors import invalid
from nettrain.models import custom, memory, weights
from nettrain.records.checkpoint import load_checkpoint

# What a model family's `inputs` must hold for a kind of data, and what the error proposes instead.
KIND_ADVICE = {"image": "use model=mlp", "tabular": "use model=mlp", "text": "use data=text",
               "text_lm": "use data=text_lm (plain text)"}


def input_kind(spec: DataSpec) -> str:
    """The kind of the data's inputs: image, tabular, text or text_lm (from its preprocessing, else its shape)."""
    kind = spec.preprocessing.get("kind")
    return kind if kind in KIND_ADVICE else "image" if spec.is_image else "tabular"


def build_model(cfg: DictConfig, spec: DataSpec) -> nn.Module:
    """The network `cfg` names (by `name`, or the user's `_target_`), shaped for `spec`."""
    if "_target_" in cfg:
        return custom.build(cfg, spec)
    entry = MODELS.get(cfg.get("name"))
    kind = input_kind(spec)
    if entry.inputs and kind not in entry.inputs:
        needs = " or ".join(entry.inputs)
        raise invalid("model", entry.name, f"needs {needs} data, but the data is {kind} (input shape {spec.input_shape}); "
                                           f"{KIND_ADVICE.get(entry.inputs[0], 'use model=mlp')}")
    return entry.load()(cfg, spec)


def build_trainable(cfg: DictConfig, data: Data) -> nn.Module:
    """The network a run trains on `data`: built for its spec, started from the weights `init_from` or
    `pretrained` name and frozen as `freeze` says, its memory (if any) holding the training rows."""
    model = build_model(cfg, data.spec)
    if cfg.get("init_from") or cfg.get("pretrained") or cfg.get("freeze"):
        weights.prepare(model, cfg, data.spec)
    memory.remember_training_rows(model, data.rows)  # after init_from: a fine-tuned model remembers its own data
    return model


def before_data(cfg: DictConfig) -> None:
    """What a run checks or fetches for its model before any data is read: the user's `_target_`s import (a
    missing module fails at once), the model family's own step (a pretrained model's weights are in the
    cache, setting the data's preprocessing to theirs), and image data left at `auto` takes the
    preprocessing of the weights the model starts from."""
    for group in GROUPS:
        target = cfg.get(group, {}).get("_target_")
        if target is not None:
            locate(f"{group}._target_", target)
    if "_target_" not in cfg.model:
        prepare = MODELS.get(cfg.model.get("name")).load_prepare()
        if prepare is not None:
            prepare(cfg)
    _preprocessing_from_weights(cfg)


def _preprocessing_from_weights(cfg: DictConfig) -> None:
    """Image data left at `auto` is prepared as the weights the model starts from were trained:
    ImageNet's normalization for `model.pretrained`, a nettrain checkpoint's own for `model.init_from`."""
    if cfg.model.get("init_from"):
        # mmap: only the spec is read here; weights.init_from reads the weights once, later.
        pre = load_checkpoint(absolute(str(cfg.model.init_from)), mmap=True)["spec"].get("preprocessing", {})
        if pre.get("kind") == "image":
            adopt(cfg.data, {k: pre[k] for k in ("channels", "image_size", "mean", "std")},
                  f"as {cfg.model.init_from} was trained")
    elif cfg.model.get("pretrained") and "_target_" not in cfg.model and MODELS.get(cfg.model.name).weights == "imagenet":
        adopt(cfg.data, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, "ImageNet's, for model.pretrained")


