"""Continuing a run: its checkpoint's own config, changed only by what keeps the run the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nettrain.config.paths import absolute
from nettrain.config.rules import validate
from nettrain.config.user_code import GROUPS, check_targets, confirm
from nettrain.errors import UserError
from nettrain.inference.load import run_dir_of
from nettrain.records.checkpoint import load_checkpoint
from nettrain.records.runs import FINISHED, read_metrics
from nettrain.training.state import planned_epochs

# Keys a resumed run may change: they extend or steer the run without changing what it computes.
RESUMABLE_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.log_every_n_steps", "trainer.device", "trainer.threads",
                  "trainer.compile", "data.num_workers", "early_stopping.patience", "early_stopping.min_delta",
                  "checkpoint.save_top_k", "trainer.checkpoint_every_n_steps")


def resumed_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The checkpoint's own config, changed only by overrides that keep the run the same run."""
    ckpt = load_checkpoint(absolute(cfg.resume), prefer="last.pt")
    if "update" in ckpt["config"]:  # its data was the update's (replayed and new examples), not its config's
        parent = ckpt["config"]["update"].get("parent")
        raise UserError(f"{ckpt['path']} is the run of a nettrain update, which is not resumed: run "
                        f"nettrain update {parent} again")
    # The user's own model, data or loss code is imported only when this command names it too;
    # any other `_target_` must be one nettrain ships or this command's config names.
    confirm(ckpt["config"], cfg, GROUPS, ckpt["path"], "give its config again (--config-dir DIR model=NAME, or +{key}={target})")
    check_targets(ckpt["config"], cfg, ckpt["path"])
    saved = OmegaConf.create(ckpt["config"])
    if "decay_norms_and_biases" not in saved.optimizer:
        # Saved before biases and norms were spared weight decay: the run goes on decaying them, as
        # it began (its optimizer state has one group per learning rate, not two).
        saved.optimizer.decay_norms_and_biases = True
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if (key == "resume" or key.startswith("hydra.") or _names_a_target(key, ckpt["config"])
                or _same(OmegaConf.select(cfg, key), OmegaConf.select(saved, key))):
            continue
        if key not in RESUMABLE_KEYS:
            raise UserError(f"cannot change {key} when resuming: it would change the run being continued "
                            f"(allowed with resume: {', '.join(RESUMABLE_KEYS)}); start a new run instead")
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
    saved.resume = str(ckpt["path"])
    validate(saved)
    finished = (read_metrics(run_dir_of(Path(ckpt["path"]))) or {}).get("status") in FINISHED
    epoch, step = ckpt["progress"]["epoch"], ckpt["progress"]["step"]
    if epoch and not ckpt["progress"]["batch"] and finished:
        # (a run killed after its last epoch's checkpoint, still "running", resumes to close its records)
        planned, limits = planned_epochs(saved.trainer, step / epoch)  # whole epochs of step / epoch steps each
        if epoch >= planned:
            raise UserError(f"{ckpt['path']} already finished {epoch} epochs of "
                            f"{' and '.join(f'{k}={OmegaConf.select(saved, k)}' for k in limits)}; "
                            f"pass a larger {' and '.join(limits)} to train on")
    return saved, ckpt


def _same(given: Any, saved: Any) -> bool:
    """An override that restates the run's own value (e.g. the model config that names the user's
    own `_target_`) changes nothing."""
    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    return given is not None and plain(given) == plain(saved)


def _names_a_target(key: str, saved: dict[str, Any]) -> bool:
    """An override that only names the user's code again (`model=mine`, `+model._target_=...`) for a
    run that was trained with it: `confirm` has checked it names the same `_target_`; the run goes on
    with its own config."""
    group = key.split(".", 1)[0]
    return (key == group or key == f"{group}._target_") and "_target_" in (saved.get(group) or {})
