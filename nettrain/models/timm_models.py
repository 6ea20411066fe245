"""timm's model zoo: `model=timm model.arch=NAME`, any name in `timm.list_models()` (`pip install 'nettrain[timm]'`).

The timm model is the backbone (built with `num_classes=0`, so it ends in pooled features) and
nettrain's head is its classifier: `model.freeze=backbone` and `optimizer.backbone_lr_factor` work as
for the ResNets, and `model.dropout` is the drop rate before the classifier (timm's `drop_rate`).
Input channels, the number of classes and, for fixed-size models (ViTs), the image size come from
the data. `model.pretrained=true` loads timm's weights for the architecture; `before_data` fetches
them and sets the data's normalization and image size from their pretrained config, before any data
is read, so an offline run fails at once with what to download and where the cache is.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid
from nettrain.models.custom import is_convolutional
from nettrain.models.net import Net

log = logging.getLogger("nettrain")


def _timm() -> Any:
    try:  # timm: an optional extra (nettrain[timm]); its internals below only when it is installed
        import timm  # an optional extra (nettrain[timm]): named when missing
    except ImportError:
        raise UserError("model=timm needs the timm package: pip install timm (or pip install 'nettrain[timm]')") from None
    return timm


def _check_arch(cfg: DictConfig) -> Any:
    timm = _timm()
    if not isinstance(cfg.arch, str) or not timm.is_model(cfg.arch):
        raise invalid("model.arch", cfg.arch, "not a timm architecture; any name in timm.list_models() "
                                              "(e.g. convnext_nano, efficientnet_b0, vit_tiny_patch16_224)")
    return timm


def create(cfg: DictConfig, spec: DataSpec, pretrained: bool = False) -> nn.Module:
    """The timm model for `spec`, without its classifier (it returns pooled features)."""
    timm = _check_arch(cfg)
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True) if cfg.get("kwargs") else {}
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.arch)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs.setdefault("img_size", list(spec.input_shape[1:]))  # position embeddings are sized for it
    try:
        return timm.create_model(cfg.arch, pretrained=pretrained, num_classes=0, in_chans=spec.input_shape[0], **kwargs)
    except (TypeError, ValueError, AssertionError) as e:  # kwargs it does not take, an image size it cannot use
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model=timm model.arch={cfg.arch} cannot be built for inputs {spec.input_shape}"
                        f"{' with ' + str(kwargs) if kwargs else ''}: {reason}") from None


def timm_model(cfg: DictConfig, spec: DataSpec) -> Net:
    backbone = create(cfg, spec)
    # One sample through it: an input too small for its downsampling fails here in one line, not
    # mid-training, and the output is the feature size the head takes.
    try:
        with torch.no_grad():
            features = backbone.eval()(torch.zeros(1, *spec.input_shape)).shape[-1]
    except RuntimeError as e:
        raise invalid("model.arch", cfg.arch, f"cannot take inputs of shape {spec.input_shape} "
                                              f"({str(e).splitlines()[0][:120]}); use larger images (data.image_size)") from None
    return Net(backbone.train(), features, spec.num_classes, cfg.dropout, convolutional=is_convolutional(backbone))


def load_pretrained(model: Net, cfg: DictConfig, spec: DataSpec) -> None:
    """timm's pretrained weights into the backbone (timm adapts the stem to the input channels and a
    ViT's position embeddings to the image size)."""
    model.backbone.load_state_dict(create(cfg, spec, pretrained=True).state_dict())
    log.info("backbone initialized from timm's pretrained %s", cfg.arch)


def before_data(cfg: DictConfig) -> None:
    """Check the architecture; when pretrained, fetch the weights (or fail in one line) and set the
    data's mean, std and image size from their pretrained config."""
    timm = _check_arch(cfg.model)
    if not cfg.model.get("pretrained"):
        return
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.model.arch)
    if pretrained_cfg is None or not (pretrained_cfg.hf_hub_id or pretrained_cfg.url):
        raise invalid("model.pretrained", True, f"timm has no pretrained weights for {cfg.model.arch}; use model.pretrained=false")
    _fetch(cfg.model.arch, pretrained_cfg)
    wanted = {"mean": list(pretrained_cfg.mean), "std": list(pretrained_cfg.std), "image_size": pretrained_cfg.input_size[-1]}
    present = {k: v for k, v in wanted.items() if k in cfg.data}
    if present:
        OmegaConf.update(cfg, "data", present, merge=True)
        log.info("data %s set from %s's pretrained config", ", ".join(f"{k}={v}" for k, v in present.items()), cfg.model.arch)
    if set(wanted) - set(present):
        log.warning("data=%s has its own normalization and size; %s's pretrained weights expect mean %s, std %s, "
                    "%d px", cfg.data.get("name"), cfg.model.arch, wanted["mean"], wanted["std"], wanted["image_size"])


def _fetch(arch: str, pretrained_cfg: Any) -> None:
    """Download the weights file into timm's cache (Hugging Face hub or URL), or say in one line what
    to fetch and where to put it."""
    from timm.models._builder import _resolve_pretrained_source  # timm's own helpers, here and below: timm is there

    source, location = _resolve_pretrained_source(pretrained_cfg.to_dict())
    try:
        if source == "hf-hub":
            _hf_download(location)
        else:
            from timm.models._hub import download_cached_file  # (timm's)

            download_cached_file(location)
    except Exception as e:  # noqa: BLE001 - offline, unreachable, no permission: all one answer
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if source == "hf-hub":
            import huggingface_hub.constants  # (timm's hub)

            repo = location if isinstance(location, str) else location[0]
            what = (f"the Hugging Face repo {repo} (`huggingface-cli download {repo.split('@')[0]}`) into "
                    f"{huggingface_hub.constants.HF_HUB_CACHE}")
        else:
            from timm.models._hub import get_cache_dir  # (timm's)

            what = f"{location} into {get_cache_dir()}"
        raise UserError(f"model.pretrained=true: cannot get timm's {arch} weights ({reason}); when online, "
                        f"fetch {what}, or set model.pretrained=false") from None


def _hf_download(location: str | tuple[str, str]) -> None:
    """The weights file timm will load: model.safetensors, else pytorch_model.bin (as timm looks)."""
    from huggingface_hub import hf_hub_download  # timm's hub, installed with it
    from huggingface_hub.errors import EntryNotFoundError

    repo, filename = (location, None) if isinstance(location, str) else location
    repo, _, revision = repo.partition("@")
    for name in [filename] if filename else ["model.safetensors", "pytorch_model.bin"]:
        try:
            hf_hub_download(repo, name, revision=revision or None)
            return
        except EntryNotFoundError:
            if name == "pytorch_model.bin" or filename:
                raise
