"""Where a run's metrics go besides metrics.json: the `logger` config group, any combination
(`logger=[tensorboard,csv,mlflow]`). `tracking.RunLog` fans every event out to the chosen loggers:

  start(run)               once, before the first step (facts, parameters)
  step(values, step)       every trainer.log_every_n_steps optimizer steps (loss, lr)
  epoch(history, step)     after every epoch, with the whole history so far
  text(tag, message, step) warnings
  figure(tag, fig, step)   the confusion matrix at the end of a classification run
  finish(status, best, files)  at the end; `files` are the best checkpoint and curves.png

A logger whose package is missing is refused before training, with the one line that installs it.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams.api_pb2 import Status
from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from nettrain.config.paths import absolute
from nettrain.errors import UserError
from nettrain.files import atomic_write_text


@dataclass
class RunInfo:
    """What a logger knows about the run it logs."""

    run_dir: Path
    name: str                          # the experiment (or model) and the run dir's name
    task: str                          # classification | regression
    params: dict[str, Any]             # what the user chose: overrides and config-group choices
    config: dict[str, Any]             # the whole resolved config
    facts: dict[str, Any]              # the start-up summary (nettrain.training.summary.startup)
    resume_step: int | None = None
    state: dict[str, Any] = field(default_factory=dict)  # what a logger kept in metrics.json (a run id)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config flattened to `group.key` scalars (lists as text), without Hydra's `_target_`s."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, (int, float, str, bool)):
            out[prefix.rstrip(".")] = node
        elif isinstance(node, list):
            out[prefix.rstrip(".")] = str(node)

    walk(config, "")
    return {k: v for k, v in out.items() if not k.split(".")[-1].startswith("_")}


class Logger:
    """Every event, ignored: a logger overrides what it records."""

    wants_files = False  # True: finish() gets the best checkpoint and curves.png

    def start(self, run: RunInfo) -> dict[str, Any]:
        """Returns what to keep in metrics.json to continue the same logged run on resume."""
        return {}

    def step(self, values: dict[str, float], step: int) -> None: ...

    def epoch(self, history: list[dict[str, Any]], step: int) -> None: ...

    def text(self, tag: str, message: str, step: int) -> None: ...

    def figure(self, tag: str, figure: Any, step: int) -> None: ...

    def finish(self, status: str, best: dict[str, float], files: dict[str, Path]) -> None: ...


# TensorBoard's HParams status per run status: a diverged or failed run is not a success, an interrupted
# one (to be resumed) is neither.
TB_STATUS = {"completed": "STATUS_SUCCESS", "stopped_early": "STATUS_SUCCESS", "interrupted": "STATUS_UNKNOWN",
             "diverged": "STATUS_FAILURE", "failed": "STATUS_FAILURE"}


def tb_layout(task: str) -> dict[str, Any]:
    """Train vs val on one chart each (custom scalars): loss, and accuracy, RMSE or (a language model) perplexity."""
    second = {"regression": "rmse", "lm": "perplexity"}.get(task, "accuracy")
    return {"curves": {"loss (train vs val)": ["Multiline", ["loss/train", "loss/val"]],
                       f"{second} (train vs val)": ["Multiline", [f"{second}/train", f"{second}/val"]]}}


def session_end(status: str) -> Any:
    """TensorBoard's HParams session-end summary with `status` (torch's writes STATUS_SUCCESS only)."""
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status)), version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                      content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])


class TensorBoard(Logger):
    """Event files in the run dir: scalars by optimizer step, the train-vs-val layout, HParams
    (the user's choices with the final metrics and the run's true status), warnings, figures."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.writer: Any = None

    def start(self, run: RunInfo) -> dict[str, Any]:
        # On resume, events the killed process logged after its last checkpoint are purged, so the
        # curves show each step once. Every scalar is logged against the optimizer step for this.
        self.writer = SummaryWriter(str(run.run_dir), purge_step=run.resume_step)
        self.writer.add_custom_scalars(tb_layout(run.task))
        self.params = run.params
        return {}

    def step(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def epoch(self, history: list[dict[str, Any]], step: int) -> None:
        r = history[-1]
        values = {"epoch": r["epoch"], "lr": r["lr"]}
        for key, value in r.items():
            for split in ("train", "val"):
                if key.startswith(f"{split}_") and key != "train_samples_per_sec":
                    values[f"{key[len(split) + 1:]}/{split}"] = value
        self.step(values, step)

    def text(self, tag: str, message: str, step: int) -> None:
        self.writer.add_text(tag, message, step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_figure(tag, figure, step)

    def finish(self, status: str, best: dict[str, float], files: dict[str, Path]) -> None:
        metrics = {f"hparam/{k}": v for k, v in best.items() if isinstance(v, (int, float))}
        # add_hparams minus its experiment summary: TensorBoard takes one run's experiment summary as
        # the whole logdir's, so in a sweep the HParams tab would show one (arbitrary) job's metrics and
        # values only. Without it, TensorBoard builds the table from every run's session. The session
        # end is ours: torch's always says STATUS_SUCCESS.
        _, session_start, _ = hparams(self.params, metrics)
        self.writer.file_writer.add_summary(session_start)
        self.writer.file_writer.add_summary(session_end(TB_STATUS.get(status, "STATUS_UNKNOWN")))
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.close()


class CSV(Logger):
    """`metrics.csv` in the run dir, one row per epoch, as Lightning's CSVLogger writes it: a header
    of the metric names (sorted), then one row per epoch (rewritten whole, so a resumed run's file
    holds each epoch once and matches metrics.json's history)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.filename = options.get("filename") or "metrics.csv"

    def start(self, run: RunInfo) -> dict[str, Any]:
        self.path = run.run_dir / self.filename
        return {}

    def epoch(self, history: list[dict[str, Any]], step: int) -> None:
        keys = sorted({k for r in history for k in r})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.path, out.getvalue())


def _mlflow_status(status: str) -> str:
    return {"completed": "FINISHED", "stopped_early": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")


class MLflow(Logger):
    """An MLflow run per training run (a resumed run continues it): parameters (the whole config,
    flattened), metrics per epoch, the best checkpoint and curves.png as artifacts. The tracking URI
    defaults to a local ./mlruns store."""

    wants_files = True

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.run_id = ""

    def start(self, run: RunInfo) -> dict[str, Any]:
        # mlflow and wandb: optional extras, imported only by a run that chose them
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = str(self.options.get("tracking_uri") or "./mlruns")
        if "://" not in uri and ":" not in uri.split("/")[0]:
            uri = Path(absolute(uri)).as_uri()  # a path: relative to where nettrain was started
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store (the local ./mlruns users know) behind this opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        name = self.options.get("experiment") or "nettrain"
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        except MlflowException as e:
            raise UserError(f"logger=mlflow: cannot use logger.mlflow.tracking_uri={uri}: "
                            f"{str(e).splitlines()[0][:200]}") from None
        self.run_id = run.state.get("mlflow_run_id") or ""
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run.name,
                                                 tags={"nettrain.run_dir": str(run.run_dir)}).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flat_config(run.config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        return {"mlflow_run_id": self.run_id, "mlflow_tracking_uri": uri}

    def epoch(self, history: list[dict[str, Any]], step: int) -> None:
        from mlflow.entities import Metric  # mlflow: an optional extra, for a run that chose it

        r, now = history[-1], int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, r["epoch"]) for k, v in r.items()
                                                    if k != "epoch" and isinstance(v, (int, float))])

    def text(self, tag: str, message: str, step: int) -> None:
        self.client.set_tag(self.run_id, tag, message[:5000])

    def finish(self, status: str, best: dict[str, float], files: dict[str, Path]) -> None:
        for path in files.values():
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=_mlflow_status(status))


class WandB(Logger):
    """A Weights & Biases run (`logger.wandb.mode=offline` writes it under RUN_DIR/wandb to sync
    later): the config, metrics per epoch, the best checkpoint as a model artifact, curves.png."""

    wants_files = True

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def start(self, run: RunInfo) -> dict[str, Any]:
        import wandb  # wandb: an optional extra, for a run that chose it

        o = self.options
        run_id = run.state.get("wandb_run_id") or uuid.uuid4().hex[:8]
        self.run = wandb.init(project=o.get("project") or "nettrain", entity=o.get("entity"), name=run.name,
                              id=run_id, resume="allow", dir=str(run.run_dir), mode=o.get("mode") or "online",
                              config=run.config, reinit="finish_previous")
        return {"wandb_run_id": run_id}

    def epoch(self, history: list[dict[str, Any]], step: int) -> None:
        r = history[-1]
        self.run.log({k: v for k, v in r.items() if isinstance(v, (int, float))}, step=r["epoch"])

    def finish(self, status: str, best: dict[str, float], files: dict[str, Path]) -> None:
        import wandb  # (as in start)

        self.run.summary.update({f"best_{k}": v for k, v in best.items()} | {"status": status})
        if files.get("curves") and files["curves"].is_file():
            self.run.log({"curves": wandb.Image(str(files["curves"]))})
        if files.get("checkpoint") and files["checkpoint"].is_file():
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_file(str(files["checkpoint"]))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if status in ("completed", "stopped_early") else 1)


# logger name -> (its class, the package it imports, the nettrain extra that installs it)
LOGGERS: dict[str, tuple[Callable[[dict[str, Any]], Logger], str | None, str | None]] = {
    "tensorboard": (TensorBoard, "tensorboard", None),
    "csv": (CSV, None, None),
    "mlflow": (MLflow, "mlflow", "mlflow"),
    "wandb": (WandB, "wandb", "wandb"),
}


def build_loggers(chosen: dict[str, Any] | None) -> list[Logger]:
    """The loggers of the `logger` config (name -> options); TensorBoard when none is chosen."""
    chosen = {"tensorboard": {}} if chosen is None else chosen
    loggers = []
    for name, options in chosen.items():
        if name not in LOGGERS:
            raise UserError(f"unknown logger={name}; allowed: {', '.join(LOGGERS)}")
        make, package, extra = LOGGERS[name]
        if package is not None:
            try:
                importlib.import_module(package)
            except ImportError:
                hint = f"pip install 'nettrain[{extra}]'" if extra else f"pip install {package}"
                raise UserError(f"logger={name} needs {package}, which is not installed: {hint}") from None
        loggers.append(make(dict(options or {})))
    return loggers
