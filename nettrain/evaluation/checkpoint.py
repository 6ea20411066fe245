"""A checkpoint's metrics on a split of its data: the data rebuilt from the checkpoint's own config (so the val
split is the one training measured), the model from its spec and weights; `evaluation.metrics.evaluate`
computes loss and accuracy exactly as validation did, `evaluation.scores` the per-class metrics and the
confusion matrix, and a binary classifier decides as it did at the checkpoint's epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from nettrain.config.paths import recorded_data
from nettrain.config.rules import validate
from nettrain.config.suggest import configs_dir, did_you_mean
from nettrain.config.user_code import confirm
from nettrain.data.base import Data, DataContext
from nettrain.data.build import build_data
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, one_of
from nettrain.evaluation.metrics import evaluate
from nettrain.evaluation.scores import classification_metrics, regression_metrics
from nettrain.inference.decision import Decision
from nettrain.inference.load import CONFIRM_HOW, Loaded, load_model
from nettrain.models.losses import build_loss
from nettrain.records.console import step_bar
from nettrain.runtime import Runtime, resolve_precision


@dataclass
class Evaluation:
    split: str
    metrics: dict[str, Any]     # what metrics.json holds
    outputs: Tensor | None      # model outputs per sample, in loader order (CPU); None for a language model
    targets: Tensor | None
    spec: DataSpec
    run_dir: Path
    other_data: dict[str, Any] = field(default_factory=dict)  # the data.KEY=VALUE that differ from the run's own


def evaluate_checkpoint(ckpt: str | Path, split: str = "val", data_overrides: dict[str, Any] | None = None,
                        device: str = "auto", confirmed: dict[str, Any] | None = None) -> Evaluation:
    """Metrics of the checkpoint's model (or an exported .onnx file's) on `split` of its data (changed by
    `data_overrides`). `confirmed`: the `model`, `loss` (and `data`, from `data_overrides`) `_target_`s the user names."""
    one_of("split", split, ("val", "test"))
    data_overrides = recorded_data(data_overrides or {})
    confirmed = {**(confirmed or {}), "data": data_overrides}
    loaded = load_model(ckpt, device, confirmed)
    confirm(OmegaConf.to_container(loaded.config), confirmed, ("data", "loss"), str(loaded.path), CONFIRM_HOW)
    evaluation = evaluate_loaded(loaded, rebuild_data(loaded, data_overrides), split)
    own = OmegaConf.to_container(loaded.config.data)
    evaluation.other_data = {k: v for k, v in data_overrides.items() if own.get(k) != v}
    if evaluation.other_data:  # a report says what it measured when it is not the run's own data
        evaluation.metrics["data"] = evaluation.other_data
    return evaluation


def check_data_keys(data: DictConfig, keys: Iterable[str]) -> None:
    """data.KEY=VALUE given to a command that rebuilds a run's data: each KEY must be one of its data config's, or
    of its data source's config as this version has it (a key added since the run was trained)."""
    current = configs_dir() / "data" / f"{data.get('name')}.yaml"
    known = [*data, *(k for k in (OmegaConf.load(current) if current.is_file() else {}) if k not in data)]
    for key in keys:
        if key not in known:
            guess = did_you_mean(f"data.{key}", [f"data.{k}" for k in known])
            raise UserError(f"unknown data.{key}{';' + guess if guess else ':'} the checkpoint's "
                            f"data={data.get('name') or data.get('_target_')} has {', '.join('data.' + k for k in known)}")


def rebuild_data(loaded: Loaded, data_overrides: dict[str, Any] | None = None) -> Data:
    """The data the model trained on, rebuilt from its run's config (so the val split is the one training
    measured), changed by `data_overrides`, and checked to fit the model: its classes, input shape and preprocessing.
    The caller confirms a `data._target_` first."""
    cfg = loaded.config
    data_cfg = cfg.data
    if data_overrides:
        check_data_keys(cfg.data, data_overrides)
        data_cfg = OmegaConf.merge(cfg.data, data_overrides)
    validate(OmegaConf.create({"data": data_cfg}))  # only data: the run's other paths may be long gone
    t = cfg.trainer
    # The model's classes in its order: an updated model's new classes follow those its run's data has.
    # A language model reads any text with its own vocabulary (the text's own would give its ids other meanings).
    own = loaded.spec.preprocessing if loaded.spec.task == "lm" else None
    data = build_data(data_cfg, DataContext(seed=t.seed, device=loaded.device, model_preprocessing=own,
                                            classes=list(loaded.spec.class_names),
                                            eval_batch_size=t.eval_batch_size or 4 * data_cfg.batch_size))
    if data.spec.class_names != loaded.spec.class_names or data.spec.input_shape != loaded.spec.input_shape:
        raise UserError(f"the data does not match the model: it has classes {data.spec.class_names} and inputs "
                        f"{data.spec.input_shape}, the model was trained on {loaded.spec.class_names} and "
                        f"{loaded.spec.input_shape}")
    if data.spec.preprocessing != loaded.spec.preprocessing:
        # e.g. a new CSV: its own statistics would standardize the columns differently from training.
        raise UserError("the data's preprocessing differs from the model's (statistics or normalization of other "
                        "data); score new inputs with nettrain predict, which uses the checkpoint's")
    return data


def evaluate_loaded(loaded: Loaded, data: Data, split: str = "val") -> Evaluation:
    """Metrics of a loaded model on `split` of `data` (from `rebuild_data`), as validation computed them: the loss
    and precision of the run's config, a binary classifier deciding as it did at the checkpoint's epoch."""
    cfg = loaded.config
    loader = data.val if split == "val" else data.test
    if loader is None:
        raise UserError(f"data={cfg.data.get('name')} has no test split here; allowed: split=val "
                        "(an image folder gets one from a test/ subfolder)")
    criterion = build_loss(cfg.loss, loaded.spec, data.class_weights).to(loaded.device)
    # The precision training validated with, so val metrics come out as recorded.
    rt = Runtime(device=loaded.device, amp_dtype=resolve_precision(cfg.trainer.precision, loaded.device), channels_last=False)
    lm = loaded.spec.task == "lm"  # its outputs are logits per token: measured as they come, never collected
    with step_bar(f"evaluating {split}", len(loader), samples_per_step=loader.batch_size) as bar:
        summary, outputs, targets = evaluate(loaded.model, loader, criterion, device=loaded.device,
                                             task=loaded.spec.task, autocast=rt.autocast, collect=not lm,
                                             on_batch=bar.advance, char_level=loaded.spec.char_level)
    if lm:  # its samples are blocks of tokens, every token predicted
        blocks = sum(len(starts) for starts in loader.plan(0))
        return Evaluation(split, {"checkpoint": str(loaded.path), "split": split, "samples": blocks,
                                  "tokens": blocks * loaded.spec.input_shape[0], **summary},
                          None, None, loaded.spec, loaded.run_dir)
    if outputs is None:
        raise UserError(f"the {split} split of data={cfg.data.get('name')} is empty")
    metrics: dict[str, Any] = {"checkpoint": str(loaded.path), "split": split, "samples": len(targets),
                               "loss": summary["loss"]}
    if loaded.spec.task == "regression":
        metrics |= regression_metrics(outputs.squeeze(-1), targets)
    else:
        decision = Decision.from_checkpoint(loaded.decision, loaded.spec) if targets.dim() == 1 else None
        if decision is None:
            metrics["accuracy"], predicted = summary["accuracy"], outputs.argmax(-1)
        else:  # binary: decided as validation decided at the checkpoint's epoch (its threshold, or argmax)
            threshold, decided = decision.measure(outputs, targets)
            metrics |= {"accuracy": decided["accuracy"], "positive_class": decision.positive_class, "threshold": threshold,
                        **{k: decided[k] for k in ("precision", "recall", "f1")}}
            predicted = decision.predict(outputs, threshold)
        metrics |= classification_metrics(predicted, targets, loaded.spec.class_names)
    return Evaluation(split, metrics, outputs, targets, loaded.spec, loaded.run_dir)
