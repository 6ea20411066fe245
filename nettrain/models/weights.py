"""Starting from trained weights instead of random ones (called by `models.build.build_trainable`, before the
optimizer is built):

- `model.init_from=CKPT`: a nettrain checkpoint (or run dir) of the same model. Its head is kept
  when the classes are the same, re-initialized when they differ (new classes, new task).
- `model.pretrained=PATH|imagenet`: a torchvision-format state dict for a ResNet backbone, from a
  file or torchvision's ImageNet weights (torch hub cache, downloaded when online). The stem is
  adapted to the data: summed over input channels for grayscale, resized for the small-image stem.
  The ImageNet file is fetched before any data is read (`fetch_pretrained`, the ResNets' step in the registry).
  For `model=timm`, `model.pretrained=true`: timm's weights for the architecture.
- `model.freeze=backbone`: only the head trains; the backbone is a fixed feature extractor.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from nettrain.config.paths import absolute
from nettrain.config.registry import MODELS, describe
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid
from nettrain.models import timm_models
from nettrain.models.memory import with_own_memory
from nettrain.models.net import Net
from nettrain.records.checkpoint import load_checkpoint

log = logging.getLogger("nettrain")


def prepare(model: nn.Module, cfg: DictConfig, spec: DataSpec) -> None:
    """Apply `cfg.init_from`, `cfg.pretrained` and `cfg.freeze` (the model config) to `model`."""
    if cfg.get("init_from") and cfg.get("pretrained"):
        raise UserError("give model.init_from (a nettrain checkpoint) or model.pretrained (backbone weights), not both")
    if cfg.get("freeze") == "backbone" and not hasattr(model, "backbone"):
        raise invalid("model.freeze", "backbone", f"model {describe(cfg)} has no backbone/head split (give it `backbone` "
                                                  f"and `head` submodules to freeze one); allowed: null")
    if cfg.get("init_from"):
        init_from(model, cfg, spec)
    if cfg.get("pretrained") and "_target_" not in cfg and MODELS.get(cfg.name).weights == "timm":
        timm_models.load_pretrained(model, cfg, spec)
    elif cfg.get("pretrained"):
        load_pretrained(model, cfg)
    if cfg.get("freeze") == "backbone":
        if not (cfg.get("init_from") or cfg.get("pretrained")):
            log.warning("model.freeze=backbone without model.init_from or model.pretrained: the head will "
                        "learn on the features of a random, frozen backbone")
        freeze_backbone(model)


def init_from(model: nn.Module, cfg: DictConfig, spec: DataSpec) -> None:
    """Load the weights of the nettrain checkpoint `cfg.init_from`; its head only when it predicts
    the same classes. Only its weights are read: its config is compared, never built (so a `_target_`
    it names is never imported)."""
    path = str(cfg.init_from)
    ckpt = load_checkpoint(absolute(path))
    source, source_spec = ckpt["config"]["model"], ckpt["spec"]
    if describe(source) != describe(cfg):
        raise invalid("model.init_from", path, f"it holds a model={describe(source)}, this run builds "
                                               f"model={describe(cfg)}; train the same model")
    if spec.task == "lm" and source_spec.get("preprocessing") != spec.preprocessing:
        # A language model's ids are its vocabulary's: other ids would mean other characters to the same weights.
        raise invalid("model.init_from", path, "its vocabulary is not the data's: read the new text with the "
                                               "checkpoint's (leave data.vocabulary_from to its default, model.init_from)")
    state: dict[str, Tensor] = ckpt["model"]
    same_head = (source_spec["task"] == spec.task and source_spec["class_names"] == spec.class_names
                 and source_spec["num_classes"] == spec.num_classes)
    grown = not same_head and grows(source_spec, spec)
    if not same_head and not hasattr(model, "head"):
        raise invalid("model.init_from", path, f"it predicts {_classes(source_spec)}, this data {_classes(spec.to_dict())}, "
                                               f"and model {describe(cfg)} has no head to re-initialize (no backbone/head split)")
    if grown:
        state = grow_head(state, model.state_dict(), source_spec["num_classes"])
    elif not same_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    state, memory_note = with_own_memory(model, state)
    _load(model, state, strict_prefixes=("",) if same_head or grown else ("backbone.",),
          what=f"model.init_from={path} ({describe(source)} from {ckpt['path']})")
    epoch = ckpt.get("progress", {}).get("epoch")
    head = ("" if same_head else f"; head grown: {_classes(source_spec)} -> {_classes(spec.to_dict())}, the old classes keep "
            f"their weights" if grown else f"; head re-initialized: {_classes(source_spec)} -> {_classes(spec.to_dict())}")
    log.info("initialized from %s (epoch %s)%s%s", ckpt["path"], epoch, head, memory_note)


def grows(source: dict[str, Any], spec: DataSpec) -> bool:
    """Whether `spec` predicts the source spec's classes in its order, and new ones after them: its head can
    keep the old classes' weights and add rows for the new ones."""
    old = source["class_names"]
    return (source["task"] == spec.task == "classification" and len(spec.class_names) > len(old)
            and spec.class_names[:len(old)] == old)


def grow_head(state: dict[str, Tensor], own: dict[str, Tensor], old_classes: int) -> dict[str, Tensor]:
    """The checkpoint's weights for a model with more classes (`own`: the model's state, its shapes): each head
    tensor with a row per class keeps the old classes' rows (their indices and weights) and gets a row for each
    new class, the mean of the old ones. A new class's logit so starts at the mean of the old classes' logits:
    below the best of them, it takes no answer from them before it is learned (a random row would, for some
    inputs, and the first steps would disturb the old classes to undo it); and a memory of rows
    (model.memory) that holds its examples lifts it above them near those examples."""
    grown = dict(state)
    for key, old in state.items():
        new = own.get(key)
        if (key.startswith("head.") and new is not None and old.dim() >= 1 and old.shape[0] == old_classes
                and new.shape[0] > old_classes and old.shape[1:] == new.shape[1:]):
            rows = old.float().mean(0, keepdim=True).to(old.dtype).expand(new.shape[0] - old_classes, *old.shape[1:])
            grown[key] = torch.cat([old, rows])
    return grown


def _classes(spec: dict[str, Any]) -> str:
    if spec["task"] == "regression":
        return "regression"
    names = spec["class_names"]
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"{len(names)} classes ({shown})"


def load_pretrained(model: Net, cfg: DictConfig) -> None:
    """torchvision-format weights into a ResNet backbone (its classifier `fc` is not used)."""
    from torchvision.models import ResNet  # here: torchvision.models costs a second to import, most runs need none

    value = str(cfg.pretrained)
    if not isinstance(model.backbone, ResNet):
        raise invalid("model.pretrained", value, f"needs a torchvision ResNet (model=resnet18, resnet34 or "
                                                 f"resnet50) or model=timm, not {describe(cfg)}")
    state = imagenet_state_dict(cfg.name) if value == "imagenet" else read_state_dict(value)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_stem(state["conv1.weight"], model.backbone.conv1.weight.shape)
    _load(model.backbone, state, strict_prefixes=("",),
          what=f"model.pretrained={value} (expected a torchvision {cfg.name} state dict)")
    log.info("backbone initialized from %s", value)


def read_state_dict(path: str) -> dict[str, Tensor]:
    try:
        state = torch.load(absolute(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling, truncation, not a torch file: all one answer
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"cannot load model.pretrained={path}: not a state dict of tensors ({reason})") from None
    if isinstance(state, dict) and state.get("format") == "nettrain-checkpoint":
        raise invalid("model.pretrained", path, "this is a nettrain checkpoint: start from it with model.init_from")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise invalid("model.pretrained", path, "not a state dict (a dict of parameter name -> tensor)")
    return state


def imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights for `name`, from the torch hub cache or downloaded there."""
    weights, cached = _imagenet(name)
    try:
        return weights.get_state_dict(progress=False, weights_only=True, check_hash=True)
    except OSError as e:  # offline (URLError), unreachable, or the cache is not writable
        raise _cannot_download(weights.url, cached, e) from None
    except RuntimeError as e:  # a truncated or corrupt cached file
        raise UserError(f"model.pretrained=imagenet: cannot read {cached} ({str(e).splitlines()[0][:200]}); "
                        f"delete it and download it again from {weights.url}") from None


def fetch_pretrained(cfg: DictConfig) -> None:
    """A ResNet's step before any data is read (config.registry): with model.pretrained=imagenet, its weights
    are fetched into the torch hub cache now, so an offline run fails at once, not after minutes of decoding."""
    if cfg.model.get("pretrained") == "imagenet":
        fetch_imagenet(cfg.model.name)


def fetch_imagenet(name: str) -> None:
    """Download torchvision's ImageNet weights for `name` into the torch hub cache unless they are
    there: called before any data is read (`models.before_data`), so an offline run fails at once,
    not after minutes of decoding; `imagenet_state_dict` then reads the cached file."""
    weights, cached = _imagenet(name)
    if os.path.isfile(cached):
        return
    match = torch.hub.HASH_REGEX.search(os.path.basename(cached))  # torchvision names files NAME-HASH.pth
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(weights.url, cached, hash_prefix=match.group(1) if match else None,
                                       progress=False)
    except OSError as e:
        raise _cannot_download(weights.url, cached, e) from None
    except RuntimeError as e:  # the download's hash differs: a proxy's error page, a truncated transfer
        raise UserError(f"model.pretrained=imagenet: the download of {weights.url} is damaged "
                        f"({str(e).splitlines()[0][:200]}); try again, or put that file at {cached}") from None


def _imagenet(name: str) -> tuple[Any, str]:
    """torchvision's default weights enum for `name` and the file it is cached as."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    return weights, os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _cannot_download(url: str, cached: str, e: OSError) -> UserError:
    reason = getattr(e, "reason", None) or e.strerror or e
    return UserError(f"model.pretrained=imagenet: cannot download {url} ({reason}); offline, download "
                     f"that file elsewhere and put it at {cached} (or give model.pretrained=PATH)")


def adapt_stem(weight: Tensor, shape: torch.Size) -> Tensor:
    """An ImageNet stem kernel [64, 3, 7, 7] for this model's stem: grayscale gets the sum over the
    colour channels (the same response to a gray image), the small-image stem a resized kernel
    with the same total weight (the same response to flat regions)."""
    out_channels, channels, *kernel = shape
    if weight.shape[0] != out_channels:
        return weight  # not a stem this can adapt: `_load` names the mismatch
    if weight.shape[1] != channels:
        weight = weight.mean(1, keepdim=True).repeat(1, channels, 1, 1) * (weight.shape[1] / channels)
    if list(weight.shape[2:]) != kernel:
        cells = kernel[0] * kernel[1]
        resized = F.interpolate(weight, size=kernel, mode="bilinear", antialias=True, align_corners=False)
        resized = resized * (weight.shape[2] * weight.shape[3] / cells)
        # Resampling keeps the total only roughly: spread the remainder evenly, so it is exact.
        weight = resized + (weight.sum((2, 3), keepdim=True) - resized.sum((2, 3), keepdim=True)) / cells
    return weight


def _load(module: nn.Module, state: dict[str, Tensor], *, strict_prefixes: tuple[str, ...], what: str) -> None:
    """`module.load_state_dict(state)`, with every missing key (under `strict_prefixes`), unexpected
    key or shape mismatch reported in one line instead of a traceback."""
    own = module.state_dict()
    problems = [f"{k} has shape {list(v.shape)}, this model's {list(own[k].shape)}"
                for k, v in state.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and k.startswith(strict_prefixes)
               and not k.endswith("num_batches_tracked")]
    problems += [f"unexpected {k}" for k in unexpected[:3]] + [f"missing {k}" for k in missing[:3]]
    if problems:
        raise UserError(f"cannot load {what}: the weights do not fit this model ({'; '.join(problems[:3])}"
                        f"{'; ...' if len(problems) > 3 else ''}); the model's config or the input shape differ")
    module.load_state_dict(state, strict=False)


def freeze_backbone(model: Net) -> None:
    """Train only the head. The frozen backbone also stays in eval mode: its BatchNorm statistics
    must not drift and its dropout must not perturb the features the head learns from."""
    model.backbone.requires_grad_(False)
    model.backbone.train = _always_eval.__get__(model.backbone)  # fit calls model.train() every epoch
    model.backbone.eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model.freeze=backbone: training %s of %s parameters (the head)", f"{trainable:,}",
             f"{sum(p.numel() for p in model.parameters()):,}")


def _always_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)
