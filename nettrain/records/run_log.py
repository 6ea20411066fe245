"""What a run writes besides checkpoints: `metrics.json`, and the loggers' files (TensorBoard events, ...)."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nettrain import __version__
from nettrain.config.registry import describe
from nettrain.files import atomic_write_text
from nettrain.records.console import console, labelled, layers_table, startup_lines
from nettrain.records.figures import confusion_figure, write_curves
from nettrain.records.loggers import RunInfo, build_loggers


def environment() -> dict[str, Any]:
    """Versions and source revision recorded with every run (reproducibility)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"nettrain": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "git_commit": commit, "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def user_choices(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """What the user chose for this run: its config-group choices (model=cnn, +experiment=...) and
    its overrides (optimizer.lr=0.01), read from the run's .hydra files; the rest are defaults, and
    listing them (30 settings) would bury the choices in TensorBoard's HParams table."""
    hydra_dir = run_dir / ".hydra"
    chosen: dict[str, Any] = {}
    try:
        choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
        overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    except (OSError, ValueError, AttributeError, OmegaConfBaseException):
        return {"model": describe(cfg.model), "data": str(cfg.data.get("name") or cfg.data.get("_target_"))}
    for group, choice in choices.items():
        if not group.startswith("hydra/") and choice is not None:
            chosen[group] = str(choice)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in chosen or key == "resume" or key.startswith("hydra."):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        chosen[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return chosen


class RunLog:
    """`metrics.json` (rewritten atomically after every epoch), the start-up summary, and every
    event fanned out to the loggers the config chose (nettrain.records.loggers)."""

    def __init__(self, run_dir: Path, cfg: DictConfig, seed: int, resume_step: int | None = None,
                 started: float | None = None) -> None:
        self.run_dir, self.cfg, self.resume_step = run_dir, cfg, resume_step
        self.path = run_dir / "metrics.json"
        chosen = cfg.get("logger")
        self.loggers = build_loggers(OmegaConf.to_container(chosen, resolve=True) if chosen is not None else None)
        self.record: dict[str, Any] = {"status": "running", "epochs": 0, "best_epoch": None, "best": {},
                                       "seed": seed, "environment": environment(), "history": []}
        # total_seconds: the wall time of the run's sessions, from each one's start (data and model set-up included).
        self.session_started, self.seconds_before = started if started is not None else time.perf_counter(), 0.0
        self.device = "cpu"

    def resume_from(self, record: dict[str, Any]) -> None:
        self.record.update({k: v for k, v in record.items() if k != "environment"})
        self.seconds_before = float(record.get("total_seconds") or 0.0)

    def start(self, facts: dict[str, Any], task: str) -> None:
        """Show and record the start-up summary; start every logger (before the first step)."""
        facts["started"] = (self.record.get("run") or {}).get("started") or facts["started"]  # a resumed run's first start
        self.record["run"] = facts
        self.device = facts["device"]
        for line in startup_lines(facts, self.run_dir):
            label, _, value = line.partition("  ")
            labelled(label, value.strip(), log=True)
        console.print(layers_table(facts["model"]))
        info = RunInfo(run_dir=self.run_dir, name=self.run_dir.name, task=task, params=user_choices(self.run_dir, self.cfg),
                       config=OmegaConf.to_container(self.cfg, resolve=True), facts=facts, resume_step=self.resume_step,
                       state=dict(self.record.get("loggers") or {}))
        state = info.state
        for logger in self.loggers:
            state |= logger.start(info)
        if state:
            self.record["loggers"] = state

    def scalars(self, values: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.step(values, step)

    def epoch(self, step: int) -> None:
        """The epoch just added to the history, to every logger."""
        for logger in self.loggers:
            logger.epoch(self.record["history"], step)

    def text(self, tag: str, message: str, step: int) -> None:
        for logger in self.loggers:
            logger.text(tag, message, step)

    def confusion_matrix(self, matrix: list[list[int]], class_names: list[str], step: int) -> None:
        """The best model's confusion matrix on the val split (rows: true class), as confusion_matrix.png and
        to the loggers."""
        samples = sum(map(sum, matrix))
        figure = confusion_figure(matrix, class_names, f"confusion matrix: val split, best epoch ({samples} samples)")
        figure.savefig(self.run_dir / "confusion_matrix.png", dpi=120, bbox_inches="tight")
        for logger in self.loggers:
            logger.figure("confusion_matrix/val", figure, step)
        plt.close(figure)

    def write(self, **fields: Any) -> None:
        self.record.update(fields)
        self.record["total_seconds"] = round(self.seconds_before + time.perf_counter() - self.session_started, 3)
        if self.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated(torch.device(self.device)) / 2**20
            self.record["peak_gpu_memory_mb"] = round(max(peak, self.record.get("peak_gpu_memory_mb") or 0.0), 1)
        atomic_write_text(self.path, json.dumps(self.record, indent=2, default=float) + "\n")

    def close(self, final_metrics: dict[str, float]) -> None:
        """Finish every logger with the run's status and final metrics; those that keep files get
        the best checkpoint and curves.png (drawn now)."""
        files: dict[str, Path] = {}
        if any(logger.wants_files for logger in self.loggers):
            files = {"checkpoint": self.run_dir / "checkpoints" / "best.pt",
                     "confusion_matrix": self.run_dir / "confusion_matrix.png"}
            if self.record["history"]:
                files["curves"] = write_curves(self.run_dir, self.run_dir / "curves.png")
        for logger in self.loggers:
            logger.finish(str(self.record["status"]), final_metrics, files)
