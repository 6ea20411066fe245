"""`--help` of the Hydra commands (train, lr-find, check-data): the groups a user chooses from, then every key
of the config those choices compose, each with what it does, in the words of the config files' own comments.

The comments are read from configs/ (a key's file is its group's chosen option, e.g. configs/model/mlp.yaml
for model.hidden); the values are the composed config's, so `nettrain train model=cnn --help` shows the CNN's.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from nettrain.config.suggest import configs_dir

_KEY = re.compile(r"^(\s*)([A-Za-z_]\w*):(.*)$")
_COMMENT = re.compile(r"(?:^|\s)#\s?(.*)$")
WIDTH = 80


@cache
def comments(path: Path) -> tuple[str, dict[str, str]]:
    """(the file's opening comment, {dotted key: its comment}) of a config file: a key's comment is the one
    on its line and any comment lines right under it, or, when its line has none, the lines just above it."""
    about: list[str] = []
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    last: str | None = None
    last_column = 0  # a comment line starting right of this continues the last key's comment
    seen_key = False
    for line in path.read_text().splitlines():
        key = _KEY.match(line)
        if key is None:
            text = line.strip()
            comment = text[1:].strip() if text.startswith("#") else None
            if comment is None or comment.startswith("@package"):
                above, last = [], None if not text else last
                continue
            if not seen_key:
                about.append(comment)
            elif last is not None and found.get(last) and line.index("#") > last_column:
                found[last] += " " + comment  # a continuation, aligned under the comment above
            else:
                above.append(comment)
                last = None
            continue
        seen_key = True
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group(2)))
        dotted = ".".join(name for _, name in stack)
        inline = _COMMENT.search(key.group(3))
        found[dotted] = inline.group(1).strip() if inline else " ".join(above)
        above, last, last_column = [], dotted, indent + len(key.group(2)) + 1
    return " ".join(about), found


@cache
def any_comment() -> dict[str, str]:
    """{dotted key: its comment} from every config file, for a key whose own file says nothing (an experiment's
    `model.dropout=0.2` is explained where model.dropout is)."""
    found: dict[str, str] = {}
    root = configs_dir()
    overlays = ("experiment", "debug", "hparams_search")
    # A group's own file says what its key does, first; an overlay's comment says why it chose its value (cats_dogs'
    # trainer.max_steps "the budget: 60 epochs of 800 photos") and is the answer only where no group file has one.
    for path in sorted(root.rglob("*.yaml"), key=lambda p: (p.parent.relative_to(root).parts[:1] in [(o,) for o in overlays], p)):
        group = path.parent.relative_to(root).as_posix()
        prefix = "" if group == "." or group.split("/")[0] in ("experiment", "debug", "hparams_search", "hydra") else f"{group}."
        for key, comment in comments(path)[1].items():
            if comment:
                found.setdefault(prefix + key, comment)
    return found


def comment_for(path: Path, key: str, dotted: str) -> str:
    """`key`'s comment in its own file `path`, else what another config file says of `dotted` (the full key)."""
    return comments(path)[1].get(key) or any_comment().get(dotted, "")


def source_file(key: str, choices: dict[str, Any], primary: str) -> tuple[Path, str]:
    """The config file that defines `key` and the key's name inside it."""
    group, _, rest = key.partition(".")
    choice = choices.get(group)
    if rest and isinstance(choice, str) and (configs_dir() / group / f"{choice}.yaml").is_file():
        return configs_dir() / group / f"{choice}.yaml", rest
    own = configs_dir() / f"{primary}.yaml"
    return (own if key in comments(own)[1] else configs_dir() / "train.yaml"), key


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config, lists and empty dicts as values, in file order."""
    if OmegaConf.is_dict(node) and len(node):
        out: list[tuple[str, Any]] = []
        for k in node:
            if str(k).startswith("_"):
                continue
            out += _leaves(node._get_node(k), f"{prefix}{k}.")
        return out
    value = node._value() if hasattr(node, "_value") else node
    if OmegaConf.is_config(value) or OmegaConf.is_config(node):
        value = OmegaConf.to_container(node, resolve=False)
    return [(prefix.rstrip("."), value)]


def _show(value: Any) -> str:
    """A value as it is written on the command line: [256,128], true, null."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _wrap(text: str, indent: int, width: int) -> list[str]:
    return textwrap.wrap(text, max(width - indent, 30), initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_on_hyphens=False, break_long_words=False)


def render(cfg: DictConfig, choices: dict[str, Any], header: str, footer: str, primary: str = "train",
           width: int | None = None) -> str:
    """The help text: the header, the groups with their options (the chosen one marked), every key with its
    value and comment, the footer; at most `width` (the terminal's, at most 80) columns."""
    width = width or min(shutil.get_terminal_size((WIDTH, 24)).columns, WIDTH)
    lines = [header.rstrip(), "", "groups (GROUP=OPTION; * = chosen):"]
    for group in sorted(p.name for p in configs_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if group == "hydra":
            continue
        chosen = choices.get(group)
        chosen = chosen if isinstance(chosen, str) else None
        options = sorted(p.stem for p in (configs_dir() / group).glob("*.yaml"))
        shown = " ".join(f"*{o}" if o == chosen else o for o in options)
        lines += textwrap.wrap(f"{group}: {shown}", width, initial_indent="  ", subsequent_indent=" " * (len(group) + 4),
                               break_on_hyphens=False, break_long_words=False)
    section = None
    for key, value in _leaves(cfg):
        top = key.split(".")[0]
        if top != section:
            section = top
            path, _ = source_file(key, choices, primary)
            about = comments(path)[0] if path.parent != configs_dir() else ""
            chosen = choices.get(top)
            lines += ["", f"{top}" + (f"  ({top}={chosen})" if isinstance(chosen, str) else "") + (":" if about or "." in key else "")]
            if about:
                lines += _wrap(about, 2, width)
        path, name = source_file(key, choices, primary)
        comment = comment_for(path, name, key)
        line = f"  {key}={_show(value)}"
        if comment and len(line) + 2 + len(comment) <= width:
            lines.append(f"{line}  {comment}")
        else:
            lines.append(line)
            if comment:
                lines += _wrap(comment, 6, width)
    lines += ["", footer.rstrip()]
    return "\n".join(lines) + "\n"


def hydra_app_help(config_name: str, overrides: list[str]) -> str:
    """`nettrain <command> [overrides] --help`: the config `config_name` composes with `overrides`, explained."""
    GlobalHydra.instance().clear()
    with initialize_config_module("nettrain.configs", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    help_cfg, choices = cfg.hydra.help, OmegaConf.to_container(cfg.hydra.runtime.choices)
    with_keys = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    GlobalHydra.instance().clear()
    return render(with_keys, choices, help_cfg.header, help_cfg.footer, config_name)


def own_keys_help(config_name: str) -> str:
    """`nettrain lr-find --help`, `nettrain check-data --help`: their usage and their own keys, read from their
    config file alone (no composition: it answers at once); the training keys they share are train's."""
    path = configs_dir() / f"{config_name}.yaml"
    cfg = OmegaConf.load(path)
    own = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("defaults", "hydra")])
    width = min(shutil.get_terminal_size((WIDTH, 24)).columns, WIDTH)
    lines = [cfg.hydra.help.header.rstrip(), "", "its own keys:"]
    for key, value in _leaves(own):
        comment = comments(path)[1].get(key, "")
        line = f"  {key}={_show(value)}"
        lines += [f"{line}  {comment}"] if comment and len(line) + 2 + len(comment) <= width else [line, *(
            _wrap(comment, 6, width) if comment else [])]
    lines += ["", *_wrap("Every key and group of nettrain train works here too (model=, data=, optimizer.lr=, ...): "
                         "`nettrain train --help` lists them with what they do.", 0, width), "", cfg.hydra.help.footer.rstrip()]
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """docs/reference.md: every config group, each option's keys with their defaults and what they do, from the
    config files themselves (scripts/make_config_reference.py writes it; a test keeps it current)."""
    lines = ["# Config reference", "",
             "Every key of every config file, with its default and what it does, as the files themselves say it",
             "(`nettrain train GROUP=OPTION --help` shows the same for the choices given). Generated from `configs/`",
             "by `scripts/make_config_reference.py`.", ""]
    root = configs_dir()
    for path in [root / "train.yaml", *sorted(p for p in root.rglob("*.yaml") if p.parent != root and "hydra" not in p.parts)]:
        about = comments(path)[0]
        cfg = OmegaConf.load(path)
        group = path.parent.relative_to(root).as_posix()
        prefix = "" if path.parent == root or group in ("experiment", "debug", "hparams_search") else f"{group}."
        keys = _leaves(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("defaults", "hydra")]))
        title = "train.yaml (top-level keys)" if path.parent == root else f"{path.parent.relative_to(root)}={path.stem}"
        lines += [f"## {title}", ""]
        if about:
            lines += [about, ""]
        if keys:
            lines += ["| key | default | what it does |", "|---|---|---|"]
            for key, value in keys:
                shown, what = (text.replace("|", "\\|") for text in (_show(value), comment_for(path, key, prefix + key)))
                lines.append(f"| `{key}` | `{shown}` | {what} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
