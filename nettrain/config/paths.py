"""Paths in a run's config: a user's path is read from where they ran the command, and recorded absolute."""

from __future__ import annotations

import os
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

# Keys holding paths that must exist before a run starts, and what they are for (config.rules checks them).
PATH_KEYS = {
    "data.path": "a data file",
    "data.val_path": "a data file",
    "data.test_path": "a data file",
    "model.init_from": "a nettrain checkpoint or run dir",
    "resume": "a run dir or checkpoint",
}


def absolute(path: str) -> str:
    """A user's path, `~` expanded and made absolute against the directory they ran from."""
    return os.path.abspath(os.path.expanduser(str(path)))


# Paths a run records in its config: made absolute before it starts, so the checkpoint's config
# means the same files from any directory (eval, predict, resume, fine-tuning).
RECORDED_PATHS = ("data.root", "data.path", "data.val_path", "data.test_path", "data.cache_dir", "model.init_from",
                  "model.pretrained", "resume")


def absolute_paths(cfg: DictConfig, names_or_paths: Iterable[str]) -> None:
    """The paths of `cfg` recorded absolute; `names_or_paths` (keys that take a local path or a name, as
    config.registry.names_or_paths lists the chosen configs') only where such a path exists."""
    for key in RECORDED_PATHS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and not (key == "model.pretrained" and value == "imagenet"):
            OmegaConf.update(cfg, key, absolute(value))
    for key in names_or_paths:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and os.path.exists(absolute(value)):
            OmegaConf.update(cfg, key, absolute(value))


def recorded_data(overrides: dict[str, object]) -> dict[str, object]:
    """data.KEY=VALUE given to a command, with their paths absolute, as a run records them."""
    return {k: absolute(v) if f"data.{k}" in RECORDED_PATHS and isinstance(v, str) else v for k, v in overrides.items()}
