"""Did-you-mean for Hydra's refusals: `trainer.max_epoch=3` -> "did you mean trainer.max_epochs?".

Hydra says only "Could not override 'trainer.max_epoch'"; the keys it could have meant are those
of configs/ (every option of every group, so a key of a group option not chosen is still found).
"""

from __future__ import annotations

import difflib
import re
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nettrain.config.rules import all_rule_keys

_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_LOAD = re.compile(r"Could not load '([^']+)/([^'/]+)'")
# Groups whose options are `# @package _global_` files: their keys are other groups' keys.
_GLOBAL_GROUPS = ("experiment", "debug", "hparams_search", "hydra")


def configs_dir() -> Path:
    return Path(str(files("nettrain.configs")))


def _flatten(node: Any, prefix: str, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not str(key).startswith("_"):
                out.add(f"{prefix}{key}")
                _flatten(value, f"{prefix}{key}.", out)


@cache
def key_owners() -> dict[str, tuple[str, ...]]:
    """Every config key and group name nettrain's configs define (dotted), each with the group options
    that define it (`model.hidden` -> `model=mlp`; none for a primary config's keys and group names)."""
    root = configs_dir()
    owners: dict[str, set[str]] = {}
    for path in root.glob("*.yaml"):  # the primary configs: train, lr_find, check_data
        keys: set[str] = set()
        primary = OmegaConf.to_container(OmegaConf.load(path)) or {}
        _flatten({k: v for k, v in primary.items() if k not in ("defaults", "hydra")}, "", keys)
        for key in keys:
            owners.setdefault(key, set())
    for group in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        owners.setdefault(group.name, set())
        if group.name in _GLOBAL_GROUPS:
            continue
        for option in group.glob("*.yaml"):
            keys = set()
            _flatten(OmegaConf.to_container(OmegaConf.load(option)) or {}, f"{group.name}.", keys)
            for key in keys:
                owners.setdefault(key, set()).add(f"{group.name}={option.stem}")
    return {key: tuple(sorted(options)) for key, options in sorted(owners.items())}


def _options(owners: tuple[str, ...]) -> str:
    return ", ".join(owners[:3]) + (", ..." if len(owners) > 3 else "")


@cache
def added_keys() -> frozenset[str]:
    """Keys nettrain reads (it has a rule for them) that no config file sets: given with `+`
    (`+optimizer.backbone_lr_factor=0.1`)."""
    return frozenset(all_rule_keys()) - set(key_owners())


def known_keys() -> tuple[str, ...]:
    """Every config key and group name nettrain's configs define (dotted)."""
    return tuple(key_owners())


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (configs_dir() / group).glob("*.yaml"))


def nearest(word: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The candidate nearest to a mistyped `word`, if any is near enough: the one did-you-mean of nettrain."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(key: str, known: list[str]) -> str:
    """' did you mean KEY?' for the known key nearest to a mistyped one, else ''."""
    guess = nearest(key, known)
    return f" did you mean {guess}?" if guess else ""


def explain(error: BaseException) -> str | None:
    """One line for a Hydra composition error that names a mistyped key or option, else None."""
    text = str(error)
    match = _OVERRIDE.search(text)
    if match:
        key = match.group(1)
        owners = key_owners().get(key)
        if owners:  # a real key, of options other than the one chosen
            choose = owners[0] if len(owners) == 1 else "one of them"
            return (f"unknown key {key} for the {key.split('.')[0]} chosen: it is a key of {', '.join(owners)}; "
                    f"choose {choose} or leave it out")
        if key in added_keys():
            return f"{key} is a key nettrain reads that no config sets: add it with +{key}=VALUE"
        guess = nearest(key, known_keys())
        whose = key_owners().get(guess) if guess else None
        if whose and len(whose) == len(group_options(guess.split(".")[0])):
            whose = None  # every option has it: which one is chosen does not matter
        hint = (f"did you mean {guess}{f' (a key of {_options(whose)})' if whose else ''}?" if guess
                else f"to add a new key use +{key}=...")
        return f"unknown key {key}: {hint} (`nettrain train --cfg job` prints every key)"
    match = _LOAD.search(text)
    if match and (configs_dir() / match.group(1)).is_dir():
        group, name = match.groups()
        options = group_options(group)
        guess = nearest(name, options)
        return f"unknown {group}={name};" + (f" did you mean {guess}?" if guess else "") + f" allowed: {', '.join(options)}"
    return None
