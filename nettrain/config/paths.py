"""Paths in a run's config: a user's path is read from where they ran the command, and recorded absolute."""

from __future__ import annotations

import os

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
# Keys that take a local path or a Hugging Face model name: made absolute only when the path exists.
NAMES_OR_PATHS = ("data.tokenizer", "model.encoder")


def absolute_paths(cfg: DictConfig) -> None:
    for key in RECORDED_PATHS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and not (key == "model.pretrained" and value == "imagenet"):
            OmegaConf.update(cfg, key, absolute(value))
    for key in NAMES_OR_PATHS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and os.path.exists(absolute(value)):
            OmegaConf.update(cfg, key, absolute(value))


