"""What every after-training command shares: `key=value` arguments with did-you-mean, `--help`, one-line
errors and a console for the result."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from nettrain.config.suggest import did_you_mean
from nettrain.errors import UserError, os_error_line
from nettrain.records.console import setup_plain_logging


def parse_args(argv: list[str], defaults: dict[str, Any], *, required: tuple[str, ...] = (),
               paths: tuple[str, ...] = (), prefixes: tuple[str, ...] = (),
               positional: str | None = None) -> dict[str, Any]:
    """`key=value` arguments over `defaults`. Values of `paths` keys are kept verbatim (a file may
    be called `1e3.png` or `#1.jpg`); the others are typed by OmegaConf (`top_k=3` is an int). Keys
    under `prefixes` (e.g. `data.`) pass through as nested overrides; any other unknown key, a
    missing required one or a malformed argument is an error (an unknown key names the nearest
    known one). `positional` names the key a bare first argument fills (`nettrain plot RUN_DIR`):
    one that is not `key=...`, or any existing path, so a sweep job's dir (`3_optimizer.lr=0.01`) works."""
    argv = ["json=true" if a == "--json" and "json" in defaults else a for a in argv]
    if positional and argv and (not _KEY.match(argv[0]) or os.path.exists(argv[0])):
        argv = [f"{positional}={argv[0]}", *argv[1:]]
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise UserError(f"expected key=value arguments, got {arg!r} (see --help)")
    verbatim = {key: value for key, value in (a.split("=", 1) for a in argv) if key in paths}
    typed = [a for a in argv if a.split("=", 1)[0] not in paths]
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(typed), resolve=True)
    except OmegaConfBaseException as e:
        raise UserError(f"cannot parse arguments {' '.join(typed)!r}: {str(e).splitlines()[0]}") from None
    allowed = list(defaults) + [f"{p}..." for p in prefixes]
    for key in given:
        if key not in defaults and f"{key}." not in prefixes:
            raise UserError(f"unknown argument {key}=...;{did_you_mean(key, list(defaults))} allowed: {', '.join(allowed)}")
    args = {**defaults, **given, **verbatim}
    for key in required:
        if args.get(key) in (None, ""):
            raise UserError(f"missing {key}=... (see --help)")
    return args


_KEY = re.compile(r"^[+~]?[A-Za-z_][\w.]*=")


def run_command(work: Callable[[list[str]], int], argv: list[str], usage: str) -> int:
    """`--help` prints `usage`; a `UserError` anywhere in `work` ends with its one line and exit code."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        return 0
    setup_plain_logging()
    try:
        return work(argv)
    except UserError as e:
        print(f"nettrain: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # an output that cannot be written (read-only, full disk, a file in the way)
        print(f"nettrain: {os_error_line(e)}", file=sys.stderr)
        return 1


def result_console() -> Any:
    """A rich console on stdout for a command's result (logs go to stderr). Redirected to a file or
    pipe, lines are never wrapped: long paths stay whole and greppable."""
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 10_000
    return console
