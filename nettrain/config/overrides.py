"""Paths in Hydra overrides taken as the user typed them.

A sweep job's dir is named by its overrides (`3_model=cnn,optimizer.lr=0.01`): given unquoted to
`resume=` or `hydra.run.dir=`, Hydra would read its `=` as a syntax error and its `,` as a sweep.
Values of the keys below are paths, never sweeps, so they are quoted for Hydra.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nettrain.config.suggest import nearest
from nettrain.errors import UserError

PATH_KEYS = ("resume", "hydra.run.dir", "hydra.sweep.dir", "data.root", "data.path", "data.cache_dir",
             "model.init_from", "model.pretrained")
_SPECIAL = set("=,[]{}()'\"\\ :$")


def quote_paths(argv: list[str]) -> list[str]:
    """`resume=out/3_lr=0.1,x=1` -> `resume='out/3_lr=0.1,x=1'` (already quoted values are left alone)."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in PATH_KEYS and value[:1] not in ("'", '"') and _SPECIAL & set(value) \
                and "${" not in value:
            arg = f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        quoted.append(arg)
    return quoted


def check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """`+key=value` may add options for a `_target_` (they become its arguments, e.g.
    `+optimizer.amsgrad=true`), never keys that nettrain reads by name: a misspelt
    `+trainer.max_epoch=3` would otherwise be accepted and do nothing."""
    groups = set(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else set()
    for override in overrides:
        if not override.startswith("+"):
            continue
        key = override.lstrip("+").split("=", 1)[0]
        if key in groups or key.startswith("hydra."):
            continue
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if parent and OmegaConf.is_dict(node) and "_target_" in node:
            continue
        known = [str(k) for k in node.keys()] if OmegaConf.is_dict(node) else []
        known = [k for k in known if k != name]
        close = nearest(name, known)
        hint = f"did you mean {parent + '.' if parent else ''}{close}?" if close else (
            f"{parent or 'the config'} has: {', '.join(known)}" if known else "nettrain does not read it")
        raise UserError(f"unknown key {key} (from {override}): {hint}")
