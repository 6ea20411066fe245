"""What a run writes besides checkpoints: TensorBoard events and `metrics.json`."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nettrain import __version__
from nettrain.checkpoint import atomic_write_text

# Train and val loss (and accuracy) on one chart each: TensorBoard's custom-scalars layout.
LAYOUT = {
    "curves": {
        "loss (train vs val)": ["Multiline", ["loss/train", "loss/val"]],
        "accuracy (train vs val)": ["Multiline", ["accuracy/train", "accuracy/val"]],
    }
}


def environment() -> dict[str, Any]:
    """Versions and source revision recorded with every run (reproducibility)."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"nettrain": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "git_commit": commit, "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's config flattened to `group.key` scalars, as TensorBoard's HParams tab wants."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}." if prefix or k else k)
        elif isinstance(node, (int, float, str, bool)):
            out[prefix.rstrip(".")] = node
        elif isinstance(node, list):
            out[prefix.rstrip(".")] = str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    for group in ("model", "data", "loss", "optimizer", "scheduler", "trainer"):
        walk(container.get(group, {}), f"{group}.")
    return {k: v for k, v in out.items() if not k.endswith("_target_") and v is not None}


class RunLog:
    """TensorBoard scalars plus `metrics.json` (rewritten atomically after every epoch)."""

    def __init__(self, run_dir: Path, cfg: DictConfig, seed: int, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.path = run_dir / "metrics.json"
        # On resume, events the killed process logged after its last checkpoint are purged, so the
        # curves show each step once. Every scalar is logged against the optimizer step for this.
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step)
        self.writer.add_custom_scalars(LAYOUT)
        self.record: dict[str, Any] = {"status": "running", "epochs": 0, "best_epoch": None, "best": {},
                                       "seed": seed, "environment": environment(), "history": []}
        self.hparams = flat_hparams(cfg)

    def resume_from(self, record: dict[str, Any]) -> None:
        self.record.update({k: v for k, v in record.items() if k != "environment"})

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, message: str, step: int) -> None:
        self.writer.add_text(tag, message, step)

    def write(self, **fields: Any) -> None:
        self.record.update(fields)
        atomic_write_text(self.path, json.dumps(self.record, indent=2, default=float) + "\n")

    def close(self, final_metrics: dict[str, float]) -> None:
        """Log hyperparameters with the final metrics (TensorBoard's HParams tab) into this run."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparam/{k}": v for k, v in final_metrics.items() if isinstance(v, (int, float))}
        # add_hparams minus its experiment summary: TensorBoard takes one run's experiment summary as
        # the whole logdir's, so in a sweep the HParams tab would show one (arbitrary) job's metrics and
        # values only. Without it, TensorBoard builds the table from every run's session.
        _, session_start, session_end = hparams(self.hparams, metrics)
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.close()
