"""Your own code, named by `_target_` in the model, data or loss config (as Hydra does for the optimizer).

`locate` imports what a `_target_` names from the working directory or PYTHONPATH, with a one-line
error naming the module when it cannot. `instantiate` calls it through `hydra.utils.instantiate`,
adding the values only the data knows (number of classes, input channels, ...) where the callable's
signature asks for them by name.

Security: a `_target_` is instantiated only from the user's own config files and command line. A
checkpoint records the `_target_`s it was trained with, but a command that rebuilds something from a
checkpoint (eval, predict, export, resume) runs `confirm` first: each `_target_` the checkpoint names
is imported only when this command's own arguments name the same one. A checkpoint from elsewhere
can therefore never make nettrain import or run code.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from nettrain.errors import UserError, first_line, invalid

# The config groups whose `_target_`s build something from the data (the optimizer's are torch's).
GROUPS = ("model", "data", "loss")

_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_TORCH_LOSS = re.compile(r"torch\.nn\.[A-Z]\w*Loss")


def locate(key: str, path: Any) -> Any:
    """The class or function `path` ('package.module.Name') names, imported from the working
    directory or PYTHONPATH. `key` is the config key holding it, for the error."""
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise invalid(key, path, "must be the import path of a class or function, e.g. mypkg.nets.TinyNet")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # `python -m` puts the working directory on the path, the `nettrain` script does not.
        # Appended, so a file in the working directory never shadows an installed package.
        sys.path.append(cwd)
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name + ".").startswith(e.name + "."):
                continue  # this prefix is not a module: it may be a class inside a shorter one
            raise UserError(f"cannot import {key}={path}: module {module_name} needs {e.name}, which is not "
                            f"installed") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing: name it and why
            raise UserError(f"cannot import {key}={path}: importing module {module_name} failed: "
                            f"{type(e).__name__}: {first_line(e)}") from None
    else:
        raise UserError(f"cannot import {key}={path}: no module named {parts[0]!r} in the working directory "
                        f"({cwd}) or on PYTHONPATH")
    for attr in parts[i:]:
        if not hasattr(obj, attr):
            raise UserError(f"cannot import {key}={path}: module {module_name} has no {attr!r}")
        obj = getattr(obj, attr)
    return obj


def instantiate(group: str, node: dict[str, Any], available: Mapping[str, Any], *,
                required: tuple[str, ...] = ()) -> Any:
    """`hydra.utils.instantiate(node)`, where `node` is the plain config of `group` with its `_target_`.
    Each of `available` (the data's shapes) is passed when the callable's signature names it and the
    config does not; a config value that contradicts the data is refused. `required` names keys of
    `node` the callable must accept (nettrain's own, like `dropout`). Arguments that do not fit the
    signature are a one-line error, not a TypeError from deep inside."""
    target = node["_target_"]
    fn = locate(f"{group}._target_", target)
    params = _parameters(fn)
    extra: dict[str, Any] = {}
    for name, value in available.items():
        if name in node:
            if node[name] != value:
                raise invalid(f"{group}.{name}", node[name], f"the data gives {value!r}: shapes come from the data, "
                                                             f"remove it from the config")
        elif params is not None and name in params:
            extra[name] = value
    if params is not None:
        for name in required:
            if name not in params:
                raise invalid(f"{group}.{name}", node[name], f"{target} takes no {name} argument; remove it")
        kwargs = {k: v for k, v in node.items() if not k.startswith("_")} | extra
        try:
            bind = inspect.signature(fn).bind_partial if node.get("_partial_") else inspect.signature(fn).bind
            bind(*node.get("_args_", []), **kwargs)
        except TypeError as e:
            raise UserError(f"{group}._target_={target}: {e} (the config gives {', '.join(kwargs) or 'nothing'})") from None
    # Built as a partial, then given the data's values: they may be tensors, which a config cannot hold.
    made = hydra_instantiate({**node, "_partial_": True})
    return functools.partial(made, **extra) if node.get("_partial_") else made(**extra)


def _parameters(fn: Any) -> set[str] | None:
    """The argument names `fn` takes by keyword; None when it has no signature to read (a builtin)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in signature.parameters.values() if p.kind in kinds}


def recorded(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(key, target) for every `_target_` in `node` (a plain config), nested ones included."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_":
                yield f"{path}._target_", value
            else:
                yield from recorded(value, f"{path}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from recorded(value, f"{path}.{i}")


def confirm(config: Mapping[str, Any], given: Any, groups: tuple[str, ...], source: str, how: str) -> None:
    """Refuse to go on unless every `_target_` that `config` (a checkpoint's, from `source`) names in
    `groups` is named identically in `given` (the command's own arguments: a dict or DictConfig).
    torch's own loss classes (`torch.nn.*Loss`) need no confirmation: they run no user code.
    `how` tells the user how to name a target on this command's line (`{key}={target}`)."""
    mine = OmegaConf.to_container(given, resolve=True) if OmegaConf.is_config(given) else dict(given or {})
    for group in groups:
        for key, target in recorded(config.get(group), group):
            if key == "loss._target_" and isinstance(target, str) and _TORCH_LOSS.fullmatch(target):
                continue
            if _select(mine, key) != target:
                raise UserError(f"{source} was trained with {key}={target}; nettrain never imports code because a "
                                f"checkpoint names it: if you trust this checkpoint and that code, "
                                f"{how.format(key=key, target=target)}")


def is_torch_loss(target: str) -> bool:
    return _TORCH_LOSS.fullmatch(target) is not None


def _select(node: Any, key: str) -> Any:
    for part in key.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def find_targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every `_target_` in a config (plain containers or OmegaConf), as (key path, value); list items
    are `key[i]`. Hydra's instantiate would import and call each of them."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((where, str(value)))
            else:
                found += find_targets(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += find_targets(value, f"{path}[{i}]")
    return found


def shipped_targets() -> set[tuple[str, str]]:
    """The (key path, `_target_`) pairs of the configs nettrain ships: a group file's keys sit under
    its group (optimizer/sgd.yaml -> optimizer._target_), a `# @package _global_` file's at the top."""
    root = Path(str(files("nettrain.configs")))
    pairs: set[tuple[str, str]] = set()
    for path in root.rglob("*.yaml"):
        group = path.relative_to(root).parent.as_posix()
        if group.startswith("hydra"):
            continue  # the hydra node is never stored with a run's config
        text = path.read_text()
        prefix = "" if "@package _global_" in text or group == "." else group.replace("/", ".")
        pairs |= set(find_targets(OmegaConf.create(text), prefix))
    return pairs


def check_targets(stored: Any, trusted: DictConfig, source: str) -> None:
    """A config read from a file (a checkpoint) may only name the `_target_`s nettrain ships or the
    ones this command's own config names, each at the same key: anything else could run code."""
    allowed = shipped_targets() | set(find_targets(trusted))
    for key, target in find_targets(stored):
        if (key, target) not in allowed:
            raise UserError(f"refusing the config stored in {source}: {key}={target!r} is neither a target nettrain "
                            f"ships nor one this command names; if it is your own code, give the config that "
                            f"names it on this command line")


# Modules whose functions run commands, touch files or processes, or load code: never a model, dataset, loss or
# optimizer. A `_target_` in them is refused before anything runs (Hydra's own blocklist would stop some of
# them only at instantiation, after the run had started).
SYSTEM_MODULES = frozenset({
    "builtins", "os", "posix", "nt", "sys", "subprocess", "shutil", "importlib", "runpy", "pickle", "marshal",
    "shelve", "ctypes", "socket", "code", "codeop", "pty", "signal", "multiprocessing", "threading", "asyncio",
    "pathlib", "io", "tempfile", "glob", "zipfile", "tarfile", "operator", "functools", "types", "inspect", "gc",
    "webbrowser", "http", "urllib", "ftplib", "smtplib", "hydra", "omegaconf", "torch.hub", "torch.load",
})


def check_target_modules(cfg: Any) -> None:
    """Refuse a `_target_` naming a function of Python's system modules (os.system, builtins.eval, ...)."""
    for key, target in find_targets(cfg):
        parts = str(target).split(".")
        if len(parts) < 2:
            continue  # not an import path at all: the rule for _target_ says so
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in SYSTEM_MODULES:
                raise UserError(f"refusing {key}={target}: it is in Python's {'.'.join(parts[:i])} module, "
                                f"not a model, dataset, loss or optimizer; a _target_ must be a class or function of "
                                f"your own or of a library (e.g. mypkg.nets.TinyNet, torch.optim.SGD)")
