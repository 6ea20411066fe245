"""What the after-training commands (eval, predict, export, plot) share: `key=value` arguments,
one-line errors, and a checkpoint turned back into a ready model.

Torch is imported only inside `load_model`, so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nettrain.config import absolute
from nettrain.errors import UserError, os_error_line

if TYPE_CHECKING:
    import torch

    from nettrain.data.spec import DataSpec


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


def did_you_mean(key: str, known: list[str]) -> str:
    """' did you mean KEY?' for the known key nearest to a mistyped one, else ''."""
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" did you mean {close[0]}?" if close else ""


def run_command(work: Callable[[list[str]], int], argv: list[str], usage: str) -> int:
    """`--help` prints `usage`; a `UserError` anywhere in `work` ends with its one line and exit code."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        return 0
    from nettrain.logs import setup_plain_logging

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
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 10_000
    return console


def one_of(key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    """`value` when it is one of `allowed`, else the one-line error naming both."""
    from nettrain.errors import invalid

    if value not in allowed:
        raise invalid(key, value, "allowed: " + ", ".join(map(str, allowed)))
    return value


def run_dir_of(checkpoint: Path) -> Path:
    """The run dir holding `checkpoint` (checkpoints/best.pt -> the run dir)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


@dataclass
class Loaded:
    """A checkpoint made ready for inference."""

    model: torch.nn.Module     # built from the checkpoint's config and spec, weights loaded, eval mode
                               # (under trainer.tta=flip: a FlipAverage of it)
    spec: DataSpec
    config: DictConfig         # the training run's resolved config
    path: Path                 # the checkpoint file
    device: torch.device
    decision: dict[str, Any] | None = None  # binary classification: the positive class and threshold (nettrain.decision)

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.path)


# How eval, predict and export name a `_target_` they may import (see nettrain.targets.confirm).
CONFIRM_HOW = "add {key}={target} to this command"


def load_model(ckpt: str | Path, device: str = "cpu", confirmed: dict[str, Any] | None = None) -> Loaded:
    """Build the checkpoint's model on `device` (`auto`, `cpu`, `cuda[:N]`) in eval mode.
    A run dir means its checkpoints/best.pt. A model `_target_` the checkpoint names is imported
    only when `confirmed` (the command's own `model.` arguments) names the same one."""
    import torch

    from nettrain.checkpoint import load_checkpoint, load_weights
    from nettrain.data.spec import DataSpec
    from nettrain.models import build_model, describe
    from nettrain.models.tta import with_tta
    from nettrain.runtime import configure_cuda, cuda_device, resolve_device
    from nettrain.targets import confirm

    one_of("device", str(device).split(":")[0], ("auto", "cpu", "cuda"))
    target = resolve_device(str(device))
    if target.type == "cuda":
        target = cuda_device(target, None)
        configure_cuda()  # the kernels training validated with
    state = load_checkpoint(absolute(str(ckpt)))
    confirm(state["config"], confirmed, ("model",), state["path"], CONFIRM_HOW)
    spec = DataSpec.from_dict(state["spec"])
    config = OmegaConf.create(state["config"])
    try:
        model = build_model(config.model, spec)
    except UserError as e:
        raise UserError(f"cannot rebuild the model of {state['path']}: {e}") from None
    load_weights(model, state["model"], state["path"], describe(config.model))
    # The memory format validation ran in: convolution kernels differ by format, and eval must
    # reproduce the recorded val metrics exactly.
    channels_last = bool(OmegaConf.select(config, "trainer.channels_last", default=False)) and getattr(model, "convolutional", False)
    model = model.to(target, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    # Test-time augmentation as validation measured it (trainer.tta=flip: the image and its mirror).
    model = with_tta(model, OmegaConf.select(config, "trainer.tta", default=None), spec)
    return Loaded(model=model.eval(), spec=spec, config=config, path=Path(state["path"]), device=target,
                  decision=state.get("decision"))
