"""Checkpoints that survive anything: written atomically, loaded safely.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) so it loads with
`torch.load(weights_only=True)`: no pickled code ever runs. It carries the resolved config and
the data spec, so eval, predict, export and resume need nothing else.
"""

from __future__ import annotations

import io
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nettrain.errors import UserError
from nettrain.files import atomic_write_bytes

FORMAT = "nettrain-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """Serialize `state` once and write it atomically to each of `paths`."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    atomic_write_bytes(buffer.getvalue(), *paths)


def find_checkpoint(path: str | Path, prefer: str = "best.pt") -> Path:
    """A checkpoint file, or the `prefer`red one inside a run dir (falling back to last.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (prefer, "last.pt"):
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise UserError(f"no checkpoint in {path}: expected {path / 'checkpoints' / prefer}")
    if not path.is_file():
        raise UserError(f"no such checkpoint: {path}")
    return path


def load_checkpoint(path: str | Path, prefer: str = "best.pt", mmap: bool = False) -> dict[str, Any]:
    """Load a nettrain checkpoint with `weights_only=True`; anything else is refused in one line.
    `mmap`: tensors stay on disk until touched (to read only the config or spec)."""
    file = find_checkpoint(path, prefer)
    _refuse_other_formats(file)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: a refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler refused the file. A pickle that asks for a class or function
        # (torch names it a "global", in words whose case changes between versions) is a refusal,
        # not a damaged file.
        reason = next((line.strip() for line in str(e).splitlines() if "global" in line.lower()), None)
        if reason is None:
            raise UserError(f"cannot load {file}: not a complete checkpoint (truncated or another format)") from e
        raise UserError(f"refusing to load {file}: not a plain-tensor checkpoint; it holds pickled objects that "
                        f"could run code (only tensors and plain values are allowed): {reason[:200]}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"cannot load {file}: not a complete checkpoint (truncated or another format): "
                        f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"cannot load {file}: not a nettrain checkpoint")
    ckpt["path"] = str(file)
    return ckpt


ZIP_MAGIC = b"PK\x03\x04"   # torch.save's format (a zip archive) since torch 1.6: every nettrain checkpoint
PICKLE_MAGIC = b"\x80"       # the first byte of a pickle (protocol 2 and later)


def _refuse_other_formats(file: Path) -> None:
    """Anything but torch's zip format is refused from its first bytes, before torch reads it: a raw pickle
    (which could run code when unpickled), or any other file."""
    try:
        with open(file, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"cannot load {file}: {e.strerror or e}") from None
    if head == ZIP_MAGIC:
        return
    if head[:1] == PICKLE_MAGIC:
        raise UserError(f"refusing to load {file}: it is a raw pickle, not a nettrain checkpoint (those are torch's zip "
                        f"format); unpickling it could run any code it holds")
    what = "an empty file" if not head else "truncated or another format"
    raise UserError(f"cannot load {file}: not a complete checkpoint ({what})")


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], file: str, what: str) -> None:
    """`module.load_state_dict(weights)`; weights that do not fit (a damaged or altered checkpoint) are one
    line naming the first misfit, not a traceback."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:  # "Error(s) in loading state_dict for Net:", then one line per misfit
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e).strip())
        raise UserError(f"cannot load the weights of {file} into {what}: {detail[:300]}") from None


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, in checkpoint-safe types."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
