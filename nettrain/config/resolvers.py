"""The resolvers the configs use: `${slug:...}` (text as a dir name), `${sweep_direction:...}` (Optuna's
direction for the monitored metric) and `${job_dir:}` (a sweep job's dir name)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from nettrain.config.paths import absolute
from nettrain.config.rules import monitor_mode


def _slug(text: str) -> str:
    """A job's overrides as a dir name: no path separators, bounded length."""
    text = re.sub(r"[^A-Za-z0-9=,.+_-]+", "-", str(text)).strip("-")
    return (text or "default")[:120]


def _sweep_direction(monitor: str, mode: str) -> str:
    """A sweeper's optimization direction for the monitored metric (hparams_search configs)."""
    return "maximize" if monitor_mode(monitor, mode) == "max" else "minimize"


# The keys a sweep varies (`optimizer.lr=1e-3,1e-2` on the command line), comma-separated: set by the
# process that launches the sweep, read where each job's dir is named (launcher workers inherit it).
SWEPT_KEYS = "NETTRAIN_SWEPT_KEYS"


def note_swept_keys(argv: list[str]) -> None:
    """Before a multirun: which of its command line's overrides sweep over several values."""
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
