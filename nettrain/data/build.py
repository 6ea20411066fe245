"""The data a config names: a registered source (config.registry.DATA) or the user's own (`_target_`)."""

from __future__ import annotations

from omegaconf import DictConfig

from nettrain.config.registry import DATA
from nettrain.data import custom
from nettrain.data.base import Data, DataContext


def build_data(cfg: DictConfig, ctx: DataContext) -> Data:
    """The loaders and spec for `cfg` (the `data` config group; a `_target_` is the user's own dataset)."""
    if "_target_" in cfg:
        return custom.build(cfg, ctx)
    return DATA.get(cfg.name).load()(cfg, ctx)
