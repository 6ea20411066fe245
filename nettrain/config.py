"""Config checks that run before any work starts (and before torch is imported).

Every rule names a key, a test and what is allowed; `validate` turns the first failure into a
one-line `UserError`. Keys that a chosen config does not have are skipped, so one table serves
every model, dataset and optimizer.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nettrain.errors import UserError, invalid

MONITORS = ("auto", "val_loss", "val_accuracy", "train_loss", "train_accuracy", "val_rmse", "val_mae", "val_f1", "val_precision",
            "val_recall")
MAXIMIZED = ("accuracy", "f1", "precision", "recall")
# The largest data.image_size: 8x the 224-299 px that ImageNet models are built for; a batch of 32 such images
# is 1.6 GB of floats already.
MAX_IMAGE_SIZE = 2048


def _slug(text: str) -> str:
    """A job's overrides as a dir name: no path separators, bounded length."""
    text = re.sub(r"[^A-Za-z0-9=,.+_-]+", "-", str(text)).strip("-")
    return (text or "default")[:120]


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """`min` or `max` for early_stopping.monitor: `auto` maximizes accuracy, F1, precision and recall,
    minimizes losses and errors."""
    return mode if mode != "auto" else ("max" if any(m in str(monitor) for m in MAXIMIZED) else "min")


def _sweep_direction(monitor: str, mode: str) -> str:
    """A sweeper's optimization direction for the monitored metric (hparams_search configs)."""
    return "maximize" if monitor_mode(monitor, mode) == "max" else "minimize"


# The keys a sweep varies (`optimizer.lr=1e-3,1e-2` on the command line), comma-separated: set by the
# process that launches the sweep, read where each job's dir is named (launcher workers inherit it).
SWEPT_KEYS = "NETTRAIN_SWEPT_KEYS"


def note_swept_keys(argv: list[str]) -> None:
    """Before a multirun: which of its command line's overrides sweep over several values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override itself, in its own words
        return
    os.environ[SWEPT_KEYS] = ",".join(o.key_or_group for o in overrides if o.is_sweep_override())


def _job_dir(*, _root_: DictConfig) -> str:
    """A sweep job's dir name: its number and the values it sweeps (`3_model=cnn,optimizer.lr=0.01`), not every
    override the command gave (they are the same for every job, and made 130-character paths). A sweep begun
    before keeps its jobs' dirs, so running it again skips its finished jobs."""
    hydra = _root_.hydra
    num, every = hydra.job.num, _slug(hydra.job.override_dirname)
    if (Path(absolute(str(hydra.sweep.dir))) / f"{num}_{every}").is_dir():
        return f"{num}_{every}"
    noted = os.environ.get(SWEPT_KEYS)
    if noted is None:
        return f"{num}_{every}"
    swept = set(filter(None, noted.split(","))) | set((hydra.sweeper.get("params") or {}).keys())
    chosen = [o for o in hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    return f"{num}_{_slug(','.join(chosen))}" if chosen else f"{num}_{every}"  # a one-job multirun: all it was given


def register_resolvers() -> None:
    """Resolvers used by the configs (`${slug:...}`, `${sweep_direction:...}`, `${job_dir:}`); idempotent."""
    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", _slug)
    if not OmegaConf.has_resolver("sweep_direction"):
        OmegaConf.register_new_resolver("sweep_direction", _sweep_direction)
    if not OmegaConf.has_resolver("job_dir"):
        OmegaConf.register_new_resolver("job_dir", _job_dir)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _int_list(v: Any) -> bool:
    return OmegaConf.is_list(v) and len(v) > 0 and all(_int(i) and i >= 1 for i in v)


def _name(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _names(v: Any) -> bool:
    return OmegaConf.is_list(v) and all(_name(i) for i in v)


def _numbers(v: Any) -> bool:
    return OmegaConf.is_list(v) and len(v) > 0 and all(_number(i) for i in v)


def _device(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None


Rule = tuple[str, Callable[[Any], bool], str]

RULES: list[Rule] = [
    ("optimizer.lr", lambda v: _number(v) and v > 0, "must be a number > 0"),
    ("optimizer.weight_decay", lambda v: _number(v) and v >= 0, "must be a number >= 0"),
    ("optimizer.momentum", lambda v: _number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
    ("optimizer.decay_norms_and_biases", _one_of(True, False), "allowed: true, false"),
    ("optimizer.backbone_lr_factor", lambda v: _number(v) and v > 0, "must be a number > 0 (backbone lr = optimizer.lr x this)"),
    ("data.batch_size", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("data.num_workers", lambda v: _int(v) and v >= 0, "must be an integer >= 0"),
    ("data.val_fraction", lambda v: _number(v) and 0 < v < 1, "must be a number in (0, 1)"),
    ("data.image_size", lambda v: v == "auto" or (_int(v) and 4 <= v <= MAX_IMAGE_SIZE),
     f"must be auto or an integer in [4, {MAX_IMAGE_SIZE}] (pixels)"),
    ("data.channels", _one_of("auto", 1, 3), "allowed: auto, 1, 3"),
    ("data.augment", _one_of("auto", "standard", "crop", "shift", "flip", "none"),
     "allowed: auto, standard, crop, shift, flip, none"),
    ("data.on_bad_file", _one_of("skip", "error"), "allowed: skip, error"),
    ("data.device_resident", _one_of("auto", True, False), "allowed: auto, true, false"),
    ("data.source", _one_of("folder", "oxford_pets"), "allowed: folder, oxford_pets"),
    ("data.download", _one_of(True, False), "allowed: true, false"),
    ("data.cache", _one_of(True, False), "allowed: true, false"),
    ("data.cache_dir", _optional(_name), "must be null or a directory"),
    ("data.mean", lambda v: v == "auto" or (_numbers(v) and all(0 <= m <= 1 for m in v)),
     "must be auto or a list of numbers in [0, 1], one per channel"),
    ("data.std", lambda v: v == "auto" or (_numbers(v) and all(s > 0 for s in v)),
     "must be auto or a list of numbers > 0, one per channel"),
    ("data.class_weights", _one_of(None, "balanced"), "allowed: null, balanced"),
    ("data.path", _optional(_name), "must be the path of a file"),
    ("data.target", _name, "must be the name of a column of data.path"),
    ("data.features", _optional(_names), "must be null (every column but the target) or a list of column names"),
    ("data.drop", _names, "must be a list of column names, e.g. [id,date]"),
    ("data.categorical", _names, "must be a list of column names, e.g. [city,model]"),
    ("data.task", _one_of("auto", "classification", "regression"), "allowed: auto, classification, regression"),
    # data=text
    ("data.text", _name, "must be the name of the text column"),
    ("data.val_path", _optional(_name), "must be null or the path of a file"),
    ("data.test_path", _optional(_name), "must be null or the path of a file"),
    ("data.on_bad_row", _one_of("skip", "error"), "allowed: skip, error"),
    ("data.tokenizer", _optional(_name), "must be null, a tokenizer.json, a nettrain checkpoint or a Hugging Face model"),
    ("data.algorithm", _one_of("wordpiece", "bpe"), "allowed: wordpiece, bpe"),
    ("data.vocab_size", lambda v: _int(v) and v >= 10, "must be an integer >= 10"),
    ("data.min_frequency", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("data.lowercase", _one_of(True, False), "allowed: true, false"),
    ("data.max_length", lambda v: _int(v) and v >= 2, "must be an integer >= 2 (tokens)"),
    # model=transformer, bag, hf
    ("model.dim", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("model.layers", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("model.heads", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("model.ff_dim", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("model.pooling", _one_of("mean", "first"), "allowed: mean, first"),
    ("model.attention_dropout", lambda v: _number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
    ("model.ngrams", lambda v: _int(v) and v >= 1, "must be an integer >= 1 (1 = words only)"),
    ("model.buckets", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("model.encoder", _name, "must be a Hugging Face model name or folder"),
    ("model.dropout", lambda v: _number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
    ("model.hidden", _int_list, "must be a non-empty list of integers >= 1, e.g. [256,128]"),
    ("model.channels", _int_list, "must be a non-empty list of integers >= 1, e.g. [32,64]"),
    ("model.convs_per_stage", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("model.activation", _one_of("relu", "gelu", "tanh", "sigmoid", "silu"),
     "allowed: relu, gelu, tanh, sigmoid, silu"),
    ("model.kernel_size", lambda v: _int(v) and v >= 1 and v % 2 == 1, "must be an odd integer >= 1"),
    ("model.pool", _one_of("max", "avg"), "allowed: max, avg"),
    ("model.freeze", _one_of(None, "backbone"), "allowed: null, backbone"),
    ("model.memory", _one_of(True, False), "allowed: true, false"),
    ("loss.label_smoothing", lambda v: _number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
    ("scheduler.warmup_epochs", lambda v: _number(v) and v >= 0, "must be a number >= 0"),
    ("scheduler.step_epochs", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("scheduler.gamma", lambda v: _number(v) and 0 < v <= 1, "must be a number in (0, 1]"),
    ("scheduler.min_lr", lambda v: _number(v) and v >= 0, "must be a number >= 0"),
    ("scheduler.max_lr_factor", lambda v: _number(v) and v >= 1, "must be a number >= 1"),
    ("scheduler.pct_start", lambda v: _number(v) and 0 < v < 1, "must be a number in (0, 1)"),
    ("trainer.max_epochs", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("trainer.max_steps", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("trainer.device", _device, "allowed: auto, cpu, cuda, cuda:N"),
    ("trainer.devices", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("trainer.seed", lambda v: _int(v) and v >= 0, "must be an integer >= 0"),
    ("trainer.precision", _one_of("auto", 32, "32", "bf16", 16, "16"), "allowed: auto, 32, bf16, 16"),
    ("trainer.compile", _one_of(True, False), "allowed: true, false"),
    ("trainer.channels_last", _one_of(True, False), "allowed: true, false"),
    ("trainer.threads", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("trainer.grad_clip", _optional(lambda v: _number(v) and v > 0), "must be null or a number > 0"),
    ("trainer.accumulate_grad_batches", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("trainer.tta", _one_of(None, "flip"), "allowed: null, flip"),
    ("trainer.ema_decay", _optional(lambda v: _number(v) and 0 < v < 1), "must be null or a number in (0, 1)"),
    ("trainer.divergence_factor", _optional(lambda v: _number(v) and v > 1), "must be null or a number > 1"),
    ("trainer.log_every_n_steps", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("trainer.limit_train_batches", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("trainer.overfit_batches", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("trainer.limit_val_batches", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("trainer.eval_batch_size", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("threshold", lambda v: v in ("auto", None) or (_number(v) and 0 < v < 1),
     "allowed: auto, null (argmax) or a number in (0, 1) (a threshold on the rare class's probability)"),
    ("early_stopping.monitor", _one_of(*MONITORS), "allowed: " + ", ".join(MONITORS)),
    ("early_stopping.mode", _one_of("auto", "min", "max"), "allowed: auto, min, max"),
    ("early_stopping.patience", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("early_stopping.min_delta", lambda v: _number(v) and v >= 0, "must be a number >= 0"),
    ("early_stopping.overfit_patience", lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    ("checkpoint.save_top_k", lambda v: _int(v) and v >= 0, "must be an integer >= 0"),
    ("trainer.checkpoint_every_n_steps", _optional(lambda v: _int(v) and v >= 1), "must be null or an integer >= 1"),
    ("lr_find.min_lr", lambda v: _number(v) and v > 0, "must be a number > 0"),
    ("lr_find.max_lr", lambda v: _number(v) and v > 0, "must be a number > 0"),
    ("lr_find.steps", lambda v: _int(v) and v >= 10, "must be an integer >= 10"),
    ("lr_find.diverge_factor", lambda v: _number(v) and v > 1, "must be a number > 1"),
]

# The keys nettrain itself reads in a group whose config is the user's own code (a `_target_`): only
# these get nettrain's checks; every other key is the user's callable's argument, passed as it is.
OWN_KEYS = {
    "model": ("name", "dropout", "init_from", "pretrained", "freeze"),
    "data": ("name", "batch_size", "num_workers", "val_fraction", "class_names", "task", "preprocessing",
             "device_resident"),
    "loss": ("name",),
}


def _checked(cfg: DictConfig, key: str) -> bool:
    """Whether nettrain's rule for `key` applies: always, unless its group is the user's own `_target_`
    and the key is not one nettrain reads there."""
    group, _, name = key.partition(".")
    node = cfg.get(group) if group in OWN_KEYS else None
    return not (OmegaConf.is_dict(node) and "_target_" in node) or name in OWN_KEYS[group]


# Keys holding paths that must exist before a run starts, and what they are for.
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
    from importlib.resources import files

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


def check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """`+key=value` may add options for a `_target_` (they become its arguments, e.g.
    `+optimizer.amsgrad=true`), never keys that nettrain reads by name: a misspelt
    `+trainer.max_epoch=3` would otherwise be accepted and do nothing."""
    from hydra.core.hydra_config import HydraConfig

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
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else (
            f"{parent or 'the config'} has: {', '.join(known)}" if known else "nettrain does not read it")
        raise UserError(f"unknown key {key} (from {override}): {hint}")


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


def validate(cfg: DictConfig) -> None:
    """Check every value a run depends on; raise a one-line `UserError` on the first bad one."""
    check_target_modules(cfg)
    for key in sorted(OmegaConf.missing_keys(cfg)):
        group = key.split(".")[0]
        chosen = OmegaConf.select(cfg, f"{group}.name", default=None, throw_on_missing=False)
        needs = f"{group}={chosen} needs it" if chosen else "it has no default"
        raise UserError(f"missing {key}: {needs}; give it on the command line as {key}=...")
    for key, check, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and _checked(cfg, key) and not check(value):
            raise invalid(key, value, allowed)
    data = cfg.get("data")
    if data is not None and data.get("root") is not None and _checked(cfg, "data.root"):
        if not data.get("download", False) and not Path(absolute(data.root)).exists():
            raise invalid("data.root", data.root, "no such directory (give an existing folder)")
    for key, what in PATH_KEYS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and _checked(cfg, key) and not Path(absolute(value)).exists():
            raise invalid(key, value, f"no such file or directory (expected {what})")
    pretrained = OmegaConf.select(cfg, "model.pretrained", default=None)
    if OmegaConf.select(cfg, "model.name", default=None) == "timm":
        if pretrained not in (None, True, False):
            raise invalid("model.pretrained", pretrained, "allowed with model=timm: true (timm's weights), false")
    elif pretrained not in (None, "imagenet") and not Path(absolute(pretrained)).is_file():
        raise invalid("model.pretrained", pretrained, "allowed: null, imagenet, or the path of a state-dict file")


_ABSENT = object()
