"""Learning from new labelled examples without forgetting (`nettrain update RUN`), into a new run:

    plan = prepare(...)           RUN's checkpoint; its own data rebuilt as it was trained (the replay, its
                                  validation set); the new examples (feedback records, new data) encoded with RUN's
                                  preprocessing, labels it never saw appended as new classes; a part held out
    before = measure(RUN)         accuracy (RMSE) on RUN's validation set and on the held-out new examples
    fit(...)                      the training loop on new + replayed examples, from RUN's weights (`model.init_from`,
                                  whose head grows for new classes), optionally distilled towards RUN's outputs
    after = measure(new run)      the same figures; the gate rejects the update when the old ones fell by more than
                                  update.max_forgetting

The new run is a normal run (checkpoints, metrics.json, TensorBoard, .hydra/config.yaml: eval, predict, export and
serve take it); its metrics.json records its `lineage` and the `gate`'s figures and verdict. It also keeps the examples it learned
(update/examples.pt), so an update of it replays them with RUN's own data: a chain of updates forgets none.
RUN is only read. A language model's examples are a text's blocks (`data.examples.Tokens`): its new text is read
with RUN's vocabulary, RUN's whole text is the pool its replayed blocks are drawn from, and the gate measures the
loss per token (`text_length` sets how long it trains).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from nettrain.config.paths import absolute, absolute_paths
from nettrain.config.registry import names_or_paths
from nettrain.config.rules import validate
from nettrain.config.suggest import did_you_mean
from nettrain.config.user_code import GROUPS, check_targets, confirm
from nettrain.data.base import Data, DataContext, files_fingerprint
from nettrain.data.build import build_data
from nettrain.data.examples import Examples, Tokens, encode_raw, from_state, gather, join, loader_of, replay_loader, targets_of
from nettrain.data.labels import balanced_weights
from nettrain.data.loaders import BatchTransform, BlockLoader
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError
from nettrain.evaluation.checkpoint import check_data_keys
from nettrain.evaluation.forgetting import Figures, gate, measure
from nettrain.files import atomic_write_bytes, atomic_write_text
from nettrain.inference.decision import class_counts
from nettrain.inference.load import CONFIRM_HOW, load_model, run_dir_of
from nettrain.models.build import build_trainable
from nettrain.models.memory import remembered_rows
from nettrain.records import rundir
from nettrain.records.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from nettrain.records.console import RunLogFile
from nettrain.records.run_log import environment
from nettrain.records.runs import read_metrics, record_status
from nettrain.runtime import resolve_device
from nettrain.training.loop import fit
from nettrain.training.state import Progress

log = logging.getLogger("nettrain")

EXAMPLES_FILE = Path("update") / "examples.pt"   # what an update learned: replayed by an update of it
EXAMPLES_FORMAT = "nettrain-update-examples"
# Where a new example's data source splits it: the keys that name a data source's files. New data given as
# data.KEY=VALUE keeps RUN's other data keys, never these (RUN's own val_path would be the new data's).
SOURCE_KEYS = ("path", "root", "val_path", "test_path")
# Keys an update may change beside update.*, data.* (the new data) and the model's own _target_: how it trains.
TRAINING_GROUPS = ("trainer", "optimizer", "scheduler", "early_stopping", "loss")


class Record(Protocol):
    """A labelled input as a client sent it (nettrain.serving.feedback.Feedback)."""

    id: str
    kind: str
    input: Any
    label: Any


@dataclass
class NewExamples:
    """The examples to learn from: a training part and a held-out part, with the classes grown by their labels."""

    train: Examples | Tokens | None
    holdout: Examples | Tokens | None
    classes: list[str]
    sources: dict[str, Any]          # lineage: what they came from, and how many


@dataclass
class Plan:
    """Everything an update needs, checked before its run dir exists."""

    checkpoint: Path                 # RUN's checkpoint (best.pt)
    parent: Path                     # RUN
    ckpt: dict[str, Any]
    cfg: DictConfig                  # the new run's config
    spec: DataSpec                   # the new run's: RUN's classes, then the new ones
    settings: DictConfig             # update.*
    pool: Examples | Tokens | None   # RUN's own training examples to replay (a sample, or all of them)
    replayed: int                    # of them, drawn afresh each epoch
    repeats: int                     # each new example's times an epoch
    old_val: Examples | Tokens       # RUN's validation set (and what updates before it held out)
    new: NewExamples
    transforms: tuple[BatchTransform | None, BatchTransform | None]  # RUN's train and val batch transforms
    rows: tuple[Tensor, Tensor] | None   # a memory of rows: everything it holds after the update
    offsets: Tensor | None = None        # update.correct_prior: per class, log(share in the mix / share in the data)
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def old_classes(self) -> int:
        return len(self.ckpt["spec"]["class_names"])


def locate(run: str | Path) -> Path:
    """RUN's checkpoint: a .pt file, or a run dir's checkpoints/best.pt (a run without one is refused)."""
    return find_checkpoint(absolute(str(run)))


def prepare(checkpoint: Path, records: list[Record], feedback_files: list[str], settings: DictConfig,
            data_overrides: dict[str, Any] | None, overrides: dict[str, Any], confirmed: dict[str, Any]) -> Plan:
    """Read RUN, rebuild its data, encode the new examples and compose the new run's config; every bad input is a
    one-line UserError here, before anything is written."""
    with logs_held_back():
        return _prepare(checkpoint, records, feedback_files, settings, data_overrides, overrides, confirmed)


def _prepare(checkpoint: Path, records: list[Record], feedback_files: list[str], settings: DictConfig,
             data_overrides: dict[str, Any] | None, overrides: dict[str, Any], confirmed: dict[str, Any]) -> Plan:
    ckpt = load_checkpoint(checkpoint)
    confirm(ckpt["config"], confirmed, GROUPS, ckpt["path"], CONFIRM_HOW)
    check_targets(ckpt["config"], OmegaConf.create(confirmed), ckpt["path"])
    parent, spec = run_dir_of(Path(ckpt["path"])), DataSpec.from_dict(ckpt["spec"])
    settings = resolved(settings, spec.task)
    saved = OmegaConf.create(ckpt["config"])
    if spec.task not in ("classification", "regression", "lm"):
        raise UserError(f"{parent} predicts {spec.task}: nettrain update teaches classes, numbers or a language model's "
                        f"next tokens")
    if not settings.train and not saved.model.get("memory"):
        raise UserError("update.train=false learns without a gradient step, into a memory of rows only "
                        f"(model.memory=true); {parent} has none: leave update.train=true")
    cfg = new_config(saved, ckpt["path"], parent, settings, overrides)
    new = new_examples(saved, spec, records, feedback_files, data_overrides, settings)
    old = rebuild(saved, spec, parent)
    previous = previous_examples(parent)
    if spec.task == "lm":
        text_length(cfg, saved, old.data, overrides, (data_overrides or {}).get("batches_per_epoch"))
    grown = DataSpec(input_shape=spec.input_shape, num_classes=len(new.classes) if spec.task == "classification"
                     else spec.num_classes, class_names=new.classes, task=spec.task, preprocessing=spec.preprocessing)
    if len(grown.class_names) > 2 >= len(spec.class_names):
        no_longer_binary(cfg)
    pad = spec.preprocessing.get("pad_id", 0)
    replayed = round(settings.replay * len(new.train))
    repeats = repeats_for(len(new.train) + replayed, cfg, settings.min_steps)
    # The pool replayed from: as many of RUN's examples as the epochs will draw (all of them, for a small data set).
    pool = replay_sample(old.data, previous["train"], replayed * repeats * cfg.trainer.max_epochs, saved.trainer.seed, pad)
    plan = Plan(checkpoint=Path(ckpt["path"]), parent=parent, ckpt=ckpt, cfg=cfg, spec=grown, settings=settings,
                pool=pool, replayed=replayed * repeats if pool is not None else 0, repeats=repeats,
                old_val=join([gather(old.data.val), previous["holdout"]], pad), new=new,
                transforms=(old.data.train.transform, old.data.val.transform),
                rows=memory_rows(old.data, previous["train"], new.train, saved, settings))
    plan.offsets = prior_offsets(plan, class_counts(old.data.train, len(spec.class_names)), previous["train"])
    plan.lineage = lineage(plan, old.fingerprint, previous["count"])
    old.data.close()
    return plan


# update.distill=auto, measured (docs/updating.md): 0.5 kept TREC's old classes 0.3-1.0 points lost (0.5-1.5 without);
# a Shakespeare character model learning TREC's questions kept its text as well without it (1.608 nats/char against
# 1.606) and learned the questions better (1.579 against 1.720).
AUTO_DISTILL = {"lm": 0.0}


def resolved(settings: DictConfig, task: str) -> DictConfig:
    """The update.* settings with `auto` resolved for the model's task (the new run records the number)."""
    if settings.distill != "auto":
        return settings
    return OmegaConf.merge(settings, {"distill": AUTO_DISTILL.get(task, 0.5)})


@contextmanager
def logs_held_back() -> Iterator[None]:
    """The log lines of what runs inside (the data sources' reports), shown once it succeeds: a refused update
    says its one line, and nothing before it."""
    logger, held = logging.getLogger("nettrain"), _Held()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(held)
    try:
        yield
    finally:
        logger.removeHandler(held)
        logger.propagate = propagate
    for record in held.records:  # (not reached when it raised)
        logger.handle(record)


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- RUN's own data ----------------------------------------------------------------------------------------

@dataclass
class Rebuilt:
    data: Data
    fingerprint: dict[str, Any] | None


def rebuild(cfg: DictConfig, spec: DataSpec, parent: Path) -> Rebuilt:
    """RUN's data as it was trained (its classes in its order, its preprocessing), on the CPU: replayed, and its
    validation split measures what the update forgets."""
    t = cfg.trainer
    try:
        validate(OmegaConf.create({"data": cfg.data}))
        data = build_data(cfg.data, DataContext(seed=t.seed, eval_batch_size=t.eval_batch_size or 4 * cfg.data.batch_size,
                                                classes=list(spec.class_names), model_preprocessing=spec.preprocessing))
    except UserError as e:
        raise UserError(f"cannot rebuild {parent}'s own data, which an update replays and measures forgetting on: {e}") from None
    if data.spec.class_names != spec.class_names or data.spec.input_shape != spec.input_shape:
        raise UserError(f"{parent}'s data is no longer what it was trained on: it now has classes {data.spec.class_names} "
                        f"and inputs {data.spec.input_shape}, the model {spec.class_names} and {spec.input_shape}")
    fingerprint = data.fingerprint or source_fingerprint(cfg.data)
    return Rebuilt(data, fingerprint)


def source_fingerprint(cfg: DictConfig) -> dict[str, Any] | None:
    """A fingerprint of the files a data config names (data.path, or every file under data.root), for sources
    whose builder records none."""
    if cfg.get("path") and Path(absolute(cfg.path)).is_file():
        return files_fingerprint([Path(absolute(cfg.path))])
    if cfg.get("root") and Path(absolute(cfg.root)).is_dir():
        root = Path(absolute(cfg.root))
        files = [p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)]
        return files_fingerprint(files, root)
    return None


def previous_examples(parent: Path) -> dict[str, Any]:
    """What the updates that made RUN learned (RUN/update/examples.pt): replayed, and measured, with RUN's own data."""
    path = parent / EXAMPLES_FILE
    if not path.is_file():
        return {"train": None, "holdout": None, "count": 0}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != EXAMPLES_FORMAT:
            raise ValueError("not a file of update examples")
        train = from_state(state["train"]) if state.get("train") else None
        holdout = from_state(state["holdout"]) if state.get("holdout") else None
    except Exception as e:  # noqa: BLE001 - unpickling, truncation, another format: one answer
        raise UserError(f"cannot read {path}, the examples an update of this run learned ({str(e).splitlines()[0][:200]}); "
                        f"restore it, or update the run that update started from") from None
    return {"train": train, "holdout": holdout, "count": len(train or ()) + len(holdout or ())}


def replay_sample(data: Data, previous: Examples | None, count: int, seed: int, pad: int) -> Examples | None:
    """`count` examples drawn (seeded, without replacement) from RUN's training split and what earlier updates
    learned; all of them when there are fewer. Only those are read (an image folder's are decoded here). A text's
    are all its tokens (RUN's training text and what updates before it learned): its loader draws the blocks."""
    if isinstance(data.train, BlockLoader):
        return join([gather(data.train), previous]) if count > 0 else None
    own = data.train.num_samples
    total = own + len(previous or ())
    if count <= 0 or total == 0:
        return None
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort().values
    mine, theirs = chosen[chosen < own], chosen[chosen >= own] - own
    return join([gather(data.train, mine) if len(mine) else None,
                 previous.take(theirs) if previous is not None and len(theirs) else None], pad)


def memory_rows(data: Data, previous: Examples | None, new: Examples | None, cfg: DictConfig,
                settings: DictConfig) -> tuple[Tensor, Tensor] | None:
    """What a memory of rows (model.memory=true) holds after the update: every row RUN remembered (its training
    split and what updates before it learned), and the new training rows when update.remember=true."""
    if data.rows is None:
        return None
    kept = join([Examples(*data.rows), previous, new if settings.remember and cfg.model.get("memory") else None])
    return kept.x, kept.y


# --- the new examples --------------------------------------------------------------------------------------

def new_examples(cfg: DictConfig, spec: DataSpec, records: list[Record], feedback_files: list[str],
                 data_overrides: dict[str, Any] | None, settings: DictConfig) -> NewExamples:
    """The examples to learn from: new data (data.KEY=VALUE on RUN's data config; its val split is held out) and
    feedback records (update.holdout of them held out), both encoded with RUN's preprocessing."""
    classes, trains, holdouts, sources = list(spec.class_names), [], [], {}
    if data_overrides:
        data, data_cfg = new_data(cfg, spec, data_overrides, settings.holdout)
        classes = list(data.spec.class_names)
        train, holdout = gather(data.train), gather(data.val)
        if settings.holdout == 0:  # nothing held out: the source's val split is learned from too
            train, holdout = join([train, holdout], spec.preprocessing.get("pad_id", 0)), None
        data.close()
        trains.append(train)
        holdouts.append(holdout)
        given = OmegaConf.masked_copy(data_cfg, [k for k in data_overrides if k in data_cfg])
        sources["data"] = {"config": OmegaConf.to_container(given, resolve=True), "train": len(train),
                           "holdout": len(holdout or ()), "fingerprint": data.fingerprint or source_fingerprint(data_cfg)}
    if records:
        examples, classes, used = feedback_examples(records, spec, classes, settings.on_bad_record)
        if examples is not None:
            train, holdout = split_holdout(examples, settings.holdout, cfg.trainer.seed, spec.task)
            trains.append(train)
            holdouts.append(holdout)
        sources["feedback"] = {"files": feedback_files, "records": len(records), "used": used,
                               "train": len(train) if examples is not None else 0,
                               "holdout": len(holdout or ()) if examples is not None else 0,
                               "digest": hashlib.sha256("\n".join(f"{r.id}\t{r.label}" for r in records)
                                                        .encode()).hexdigest()[:16]}
    pad = spec.preprocessing.get("pad_id", 0)
    new = NewExamples(join(trains, pad), join(holdouts, pad), classes, sources)
    if new.train is None:
        raise UserError("no new examples to learn from: " + ("the feedback records and the new data held none that "
                        "could be used" if sources else "no feedback records were read (RUN/feedback/*.jsonl, kept by "
                        "nettrain serve, read when update.feedback=true) and no new data was given (data.path=FILE or "
                        "data.root=DIR)"))
    return new


def new_data(cfg: DictConfig, spec: DataSpec, overrides: dict[str, Any], holdout: float) -> tuple[Data, DictConfig]:
    """The new data: RUN's data config with `overrides` (its own files: RUN's are not carried over), encoded with
    RUN's preprocessing, its classes first; its val split (data.val_fraction=update.holdout unless given) held out."""
    data_cfg = OmegaConf.merge(cfg.data, {})
    check_data_keys(data_cfg, overrides)
    for key in SOURCE_KEYS:
        if key in data_cfg:
            data_cfg[key] = None
    data_cfg = OmegaConf.merge(data_cfg, overrides)
    if not any(data_cfg.get(key) for key in SOURCE_KEYS[:2]):
        raise UserError("new data needs its files: give data.path=FILE or data.root=DIR (feedback records need none)")
    if "val_fraction" in data_cfg and "val_fraction" not in overrides and holdout > 0:
        data_cfg.val_fraction = holdout
    if "task" in data_cfg:
        data_cfg.task = spec.task  # the model's task, never guessed again from the new targets
    checked = OmegaConf.create({"data": data_cfg})
    absolute_paths(checked, names_or_paths(checked))
    validate(checked)
    data = build_data(checked.data, DataContext(seed=cfg.trainer.seed, classes=list(spec.class_names),
                                                model_preprocessing=spec.preprocessing))
    made = data.spec
    if made.task != spec.task or made.input_shape != spec.input_shape or made.preprocessing != spec.preprocessing \
            or made.class_names[:len(spec.class_names)] != spec.class_names:
        data.close()
        otherwise = ", prepared otherwise" if made.preprocessing != spec.preprocessing else ""
        raise UserError(f"the new data does not fit the model: {made.task} of inputs {made.input_shape} into "
                        f"{made.class_names or 'numbers'}{otherwise}; the model does {spec.task} of inputs "
                        f"{spec.input_shape} into {spec.class_names or 'numbers'}")
    return data, checked.data


def feedback_examples(records: list[Record], spec: DataSpec, classes: list[str], on_bad: str
                      ) -> tuple[Examples | None, list[str], int]:
    """(the usable records' model inputs and targets, the classes grown by their labels, how many were usable)."""
    kind = spec.preprocessing.get("kind")
    named = [(f"feedback record {r.id}", r) for r in records]
    failures = [(name, f"it is a {r.kind} record; this model takes {kind} inputs") for name, r in named if r.kind != kind]
    named = [(name, r) for name, r in named if r.kind == kind]
    kept, y, classes, bad_labels = targets_of([(name, r.label) for name, r in named], spec.task, classes)
    named = [named[i] for i in kept]
    encoded, examples, bad_inputs = encode_raw([(name, r.input) for name, r in named], spec.preprocessing)
    failures += bad_labels + bad_inputs
    if failures:
        report_bad(failures, on_bad, len(records))
    if examples is None:
        return None, classes, 0
    examples.y = y[torch.tensor(encoded, dtype=torch.long)]
    return examples, classes, len(encoded)


def report_bad(failures: list[tuple[str, str]], on_bad: str, total: int) -> None:
    name, why = failures[0]
    if on_bad == "error":
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise UserError(f"{name}: {why}{more}; fix or remove it, or pass update.on_bad_record=skip to learn from the others")
    log.warning("%d of %d feedback record(s) left out (update.on_bad_record=skip):", len(failures), total)
    for name, why in failures[:10]:
        log.warning("  %s: %s", name, why)
    if len(failures) > 10:
        log.warning("  ... and %d more", len(failures) - 10)


def split_holdout(examples: Examples, fraction: float, seed: int, task: str) -> tuple[Examples, Examples | None]:
    """(train, held out): `fraction` of each class held out (seeded; a class keeps at least one example to learn
    from), of all the examples for regression."""
    if fraction == 0:
        return examples, None
    groups = [torch.arange(len(examples))] if task != "classification" else \
        [torch.nonzero(examples.y == c).flatten() for c in examples.y.unique()]
    generator = torch.Generator().manual_seed(seed)
    train, held = [], []
    for group in groups:
        shuffled = group[torch.randperm(len(group), generator=generator)]
        n = min(len(group) - 1, int(len(group) * fraction + 0.5))
        held.append(shuffled[:n])
        train.append(shuffled[n:])
    held_out = torch.cat(held).sort().values
    return examples.take(torch.cat(train).sort().values), examples.take(held_out) if len(held_out) else None


# --- the new run -------------------------------------------------------------------------------------------

def new_config(saved: DictConfig, checkpoint: str, parent: Path, settings: DictConfig,
               overrides: dict[str, Any]) -> DictConfig:
    """RUN's own config, started from its weights (model.init_from), changed only by the update's training
    overrides (trainer., optimizer., ...); its update settings recorded under `update`."""
    cfg = OmegaConf.merge(saved, {})
    cfg.model.init_from = checkpoint  # RUN's weights; a head grown for new classes (models.weights)
    if cfg.model.get("pretrained"):
        cfg.model.pretrained = None   # the weights are RUN's, not those it started from
    cfg.resume = None
    cfg.trainer.devices = 1           # the update's data is built in this process
    for key, value in overrides.items():
        group = key.split(".", 1)[0]
        if group not in TRAINING_GROUPS or OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            known = [f"{g}.{k}" for g in TRAINING_GROUPS for k in (cfg.get(g) or {})]
            groups = ", ".join(f"{g}.KEY" for g in TRAINING_GROUPS)
            guess = did_you_mean(key, known)
            raise UserError(f"unknown argument {key}=...: an update changes only how it trains ({groups}: keys RUN's "
                            f"config has){';' + guess if guess else ''}")
        OmegaConf.update(cfg, key, value, merge=False)
    if cfg.trainer.devices != 1:
        raise UserError(f"invalid trainer.devices={cfg.trainer.devices}: an update trains in one process (its data is "
                        f"built in it); allowed: 1")
    cfg["update"] = OmegaConf.merge(settings, {"parent": str(parent), "checkpoint": checkpoint})
    validate(cfg)
    return cfg


def prior_offsets(plan: Plan, run_counts: list[int] | None, previous: Examples | None) -> Tensor | None:
    """update.correct_prior: per class, log(its share of an epoch's training mix) - log(its share of RUN's training
    data with the new examples), added to the logits the loss sees (logit adjustment, Menon et al. 2021). The mix
    holds the new examples far more often than the data does (4 old per new one: 20 % for a class that is 14 %
    of the data); trained on it plainly, the model answers the new classes more often than they occur. With the
    offsets its own logits learn the data's shares. None: numbers, no replay, class weights, counts not at hand."""
    s, spec = plan.settings, plan.spec
    if (not s.correct_prior or spec.task != "classification" or not plan.replayed or run_counts is None
            or plan.cfg.data.get("class_weights")):
        return None
    k = spec.num_classes
    natural = torch.zeros(k, dtype=torch.float64)
    natural[:len(run_counts)] += torch.tensor(run_counts, dtype=torch.float64)
    for part in (previous, plan.new.train):
        if part is not None:
            natural += torch.bincount(part.y, minlength=k).double()
    mix = torch.bincount(plan.new.train.y, minlength=k).double() * plan.repeats
    mix += torch.bincount(plan.pool.y, minlength=k).double() * plan.replayed / len(plan.pool)
    share = lambda counts: (counts / counts.sum()).clamp_min(1e-6)  # noqa: E731 - a class the mix lacks: -13.8
    return (share(mix).log() - share(natural).log()).float()


class PriorCorrection(nn.Module):
    """The run's loss on the logits plus `offsets` (`prior_offsets`), while training; validation, run without
    gradients, measures the loss alone, as eval will."""

    def __init__(self, loss: nn.Module, offsets: Tensor) -> None:
        super().__init__()
        self.loss = loss
        self.register_buffer("offsets", offsets)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self.loss(outputs, targets)
        return self.loss(outputs + self.offsets.to(device=outputs.device, dtype=outputs.dtype), targets)


def no_longer_binary(cfg: DictConfig) -> None:
    """RUN was a binary classifier and the update gives it more classes: its decision threshold and the rare
    class's F1 (precision, recall) it may have been selected by no longer exist; accuracy selects the best epoch."""
    if cfg.get("threshold") not in ("auto", None):
        log.info("threshold=%s: RUN's decision threshold does not apply to %s classes; argmax decides", cfg.threshold,
                 "more than two")
    cfg.threshold = "auto"
    if cfg.early_stopping.monitor in ("val_f1", "val_precision", "val_recall"):
        log.info("early_stopping.monitor=%s (binary only) -> val_accuracy: the update adds classes",
                 cfg.early_stopping.monitor)
        cfg.early_stopping.monitor = "val_accuracy"


def repeats_for(examples: int, cfg: DictConfig, min_steps: int) -> int:
    """How many times an epoch serves each training example: once, or more when there are too few for `min_steps`
    optimizer steps in trainer.max_epochs epochs (a few feedback records would otherwise get a few steps)."""
    batch, epochs, accumulate = cfg.data.batch_size, cfg.trainer.max_epochs, cfg.trainer.accumulate_grad_batches
    per_epoch = max(1, max(1, examples // batch) // accumulate)
    needed = math.ceil(min_steps / epochs)
    if per_epoch >= needed:
        return 1
    times = math.ceil(needed * batch * accumulate / examples)
    log.info("%d training example(s) an epoch, %d a batch: each epoch serves them %d times, for at least "
             "update.min_steps=%d steps over %d epochs", examples, batch, times, min_steps, epochs)
    return times


def text_length(cfg: DictConfig, saved: DictConfig, old: Data, overrides: dict[str, Any],
                batches_per_epoch: int | None) -> None:
    """A language model's update: an epoch is a pass over the new text's blocks with those replayed beside them
    (data.batches_per_epoch, given to the update, fixes it instead: RUN's counted RUN's text), and it trains as many
    epochs as RUN made passes over its own text, unless trainer.max_epochs or trainer.max_steps is given (RUN's
    max_steps counted RUN's steps: dropped)."""
    cfg.data.batches_per_epoch = batches_per_epoch
    if "trainer.max_steps" not in overrides:
        cfg.trainer.max_steps = None
    if "trainer.max_epochs" in overrides or "trainer.max_steps" in overrides:
        return
    d, t = saved.data, saved.trainer
    ranks = t.devices if isinstance(t.devices, int) else 1
    per_pass = max(len(old.train.ids) // (d.block_size * d.batch_size * ranks), 1)  # RUN's batches in one pass
    batches = t.max_steps * t.accumulate_grad_batches if t.get("max_steps") else \
        t.max_epochs * (d.get("batches_per_epoch") or per_pass)
    cfg.trainer.max_epochs = max(1, min(t.max_epochs, round(batches / per_pass)))
    log.info("a language model's update: %d epoch(s), as many passes as RUN made over its text (an epoch: a pass over "
             "the new text, with the replayed blocks)", cfg.trainer.max_epochs)


def data_source(plan: Plan) -> Any:
    """The loop's data (training.loop.fit's `data_source`): the new and replayed examples to train on, RUN's
    validation set with the held-out new examples to validate on, served as RUN's loaders served its data."""
    def build(cfg: DictConfig, ctx: DataContext) -> Data:
        train_transform, val_transform = plan.transforms
        pad = plan.spec.preprocessing.get("pad_id", 0)
        val = join([plan.old_val, plan.new.holdout], pad)
        weights = None
        if cfg.get("class_weights") == "balanced" and plan.spec.task == "classification":
            weights = balanced_weights(join([plan.new.train, plan.pool], pad).y.tolist(), plan.spec.num_classes)
        train = replay_loader(plan.new.train, plan.pool, plan.replayed, plan.repeats, cfg, ctx, train_transform, pad)
        return Data(spec=plan.spec, train=train,
                    val=loader_of(val, cfg, ctx, train=False, transform=val_transform), class_weights=weights,
                    fingerprint=plan.ckpt.get("data_fingerprint"), rows=plan.rows)
    return build


def lineage(plan: Plan, replayed_fingerprint: dict[str, Any] | None, previous: int) -> dict[str, Any]:
    """What metrics.json records of where the new run came from."""
    trained_on = plan.ckpt.get("data_fingerprint")
    if trained_on and replayed_fingerprint and trained_on != replayed_fingerprint:
        log.warning("%s's data changed since it was trained (fingerprint %s then, %s now): the update replays it as it "
                    "is now", plan.parent, trained_on.get("digest"), replayed_fingerprint.get("digest"))
    old = plan.ckpt["spec"]["class_names"]
    return {"parent": str(plan.parent), "parent_checkpoint": str(plan.checkpoint),
            "data_fingerprints": {"parent_trained_on": trained_on, "replayed": replayed_fingerprint,
                                  **{name: source.get("fingerprint") for name, source in plan.new.sources.items()
                                     if "fingerprint" in source}},
            "learned_from": plan.new.sources,
            "examples": {"new_train": len(plan.new.train or ()), "new_holdout": len(plan.new.holdout or ()),
                         "replayed_per_epoch": plan.replayed, "replay_pool": len(plan.pool or ()),
                         "repeats": plan.repeats, "from_earlier_updates": previous, "old_validation": len(plan.old_val)},
            "classes": {"old": list(old), "new": plan.spec.class_names[len(old):]},
            **({"tokens": tokens_of(plan)} if isinstance(plan.old_val, Tokens) else {}),
            "prior_offsets": [round(v, 4) for v in plan.offsets.tolist()] if plan.offsets is not None else None,
            "settings": OmegaConf.to_container(plan.settings)}


def tokens_of(plan: Plan) -> dict[str, int]:
    """A language model's update in tokens (its examples are blocks of data.block_size of them)."""
    def count(text: Tokens | None) -> int:
        return len(text.ids) if text is not None else 0
    return {"block_size": plan.old_val.block_size, "new_train": count(plan.new.train), "new_holdout": count(plan.new.holdout),
            "replay_pool": count(plan.pool), "old_validation": count(plan.old_val)}


def save_examples(plan: Plan, run_dir: Path) -> None:
    """What this run learned, with what the updates before it learned (update/examples.pt)."""
    previous = previous_examples(plan.parent)
    pad = plan.spec.preprocessing.get("pad_id", 0)
    train, holdout = join([previous["train"], plan.new.train], pad), join([previous["holdout"], plan.new.holdout], pad)
    buffer = io.BytesIO()
    torch.save({"format": EXAMPLES_FORMAT, "classes": plan.spec.class_names, "train": train.state() if train else None,
                "holdout": holdout.state() if holdout else None}, buffer)
    atomic_write_bytes(buffer.getvalue(), run_dir / EXAMPLES_FILE)


# --- the old model's outputs as a second target ------------------------------------------------------------

class Distillation(nn.Module):
    """The run's loss, plus, while training, `weight` x how far the model's outputs on RUN's classes are from RUN's
    own (Learning without Forgetting, Li & Hoiem 2016): the KL divergence of their softmaxes at `temperature`
    (x temperature^2, so its gradients keep their scale; a language model's at every position), or the squared
    error of a regression's values. The inputs are taken from the model's forward (a pre-hook), so the loop calls
    it as any loss; validation, run without gradients, measures the loss alone, as eval will."""

    def __init__(self, loss: nn.Module, teacher: nn.Module, weight: float, temperature: float, regression: bool) -> None:
        super().__init__()
        self.loss = loss
        self.teacher = [teacher]  # in a list: not a submodule (RUN's weights, frozen, never the run's own)
        self.weight, self.temperature, self.regression = weight, temperature, regression
        self.inputs: Tensor | None = None

    def attach(self, model: nn.Module) -> Distillation:
        device = next(model.parameters()).device
        self.teacher[0].to(device).eval().requires_grad_(False)
        model.register_forward_pre_hook(self._keep_inputs)
        return self

    def _keep_inputs(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.inputs = args[0]

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        loss = self.loss(outputs, targets)
        if self.inputs is None or not torch.is_grad_enabled():
            return loss
        with torch.no_grad():
            old = self.teacher[0](self.inputs).float()
        if self.regression:
            return loss + self.weight * F.mse_loss(outputs.float(), old)
        t = self.temperature
        if outputs.dim() == 3:  # a language model's [batch, position, token]: each position's next token
            outputs, old = outputs.flatten(0, 1), old.flatten(0, 1)
        kept = F.log_softmax(outputs[:, :old.shape[1]].float() / t, dim=-1)  # RUN's classes: the first ones
        return loss + self.weight * t * t * F.kl_div(kept, F.log_softmax(old / t, dim=-1), log_target=True,
                                                     reduction="batchmean")


# --- the update's run --------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """How an update ended: its run, how its training ended, the gate's verdict."""

    run_dir: Path
    status: str                          # completed | stopped_early | diverged | interrupted
    lineage: dict[str, Any]              # metrics.json's `lineage`
    gate: dict[str, Any] | None          # metrics.json's `gate` (None: the training did not finish)
    signal: int | None = None
    error: str | None = None

    @property
    def verdict(self) -> str | None:
        return (self.gate or {}).get("verdict")

    @property
    def exit_code(self) -> int:
        """0 accepted (or forced), 3 rejected by the gate, 1 diverged, 128 + the signal when interrupted."""
        if self.status == "interrupted":
            return 128 + (self.signal or 2)
        if self.status not in FINISHED_WELL:
            return 1
        return REJECTED_EXIT if self.verdict == "rejected" else 0


FINISHED_WELL = ("completed", "stopped_early")
REJECTED_EXIT = 3  # an update the gate rejected: not a bad input (2), not a failure (1)


def run_dir_for(output: str | None, parent: Path) -> Path:
    """The new run's dir: `output`, or outputs/DATE/TIME_update like train's; never RUN or inside it, never a dir
    that holds files already."""
    if output:
        path = Path(absolute(output))
    else:
        now = datetime.now()
        path = Path(absolute("outputs")) / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S-%f')}_update"
    if path == parent or parent in path.parents:
        raise UserError(f"invalid output={output}: it is inside {parent}, and an update never writes into the run it "
                        f"updates; give another dir")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"invalid output={output}: {path} already holds files; an update writes a new run: give a new "
                        f"or empty dir")
    return path


def run_update(plan: Plan, run_dir: Path, arguments: list[str]) -> Outcome:
    """Measure RUN, train the new run (or only fill its memory), measure it, and record the lineage and verdict."""
    cfg = plan.cfg
    device = resolve_device(str(cfg.trainer.device))
    parent = load_model(plan.checkpoint, str(device))
    before = _measure(plan, parent.model, device, plan.old_classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.lock(run_dir)
    try:
        rundir.check_writable(run_dir)
        with _run_log(run_dir):
            _record_hydra(run_dir, cfg, arguments)
            log.info("update of %s: %d new training example(s), %d held out; %d of RUN's %d replayed each epoch%s",
                     plan.parent, len(plan.new.train or ()), len(plan.new.holdout or ()), plan.replayed,
                     len(plan.pool or ()),
                     f"; new classes: {', '.join(plan.lineage['classes']['new'])}" if plan.lineage["classes"]["new"] else "")
            status, signal, error = _train(plan, run_dir, parent.model)
            verdict = None
            if status in FINISHED_WELL:
                after = _measure(plan, load_model(run_dir, str(device)).model, device, plan.spec.num_classes)
                verdict = gate(before, after, plan.settings.max_forgetting, plan.settings.force)
            save_examples(plan, run_dir)
            _write_record(run_dir, plan.lineage, verdict)
    except UserError as e:
        record_status(run_dir, "failed", str(e), exit_code=e.exit_code)
        raise
    finally:
        rundir.unlock(run_dir)
    return Outcome(run_dir, status, plan.lineage, verdict, signal, error)


def _measure(plan: Plan, model: nn.Module, device: torch.device, classes: int) -> Figures:
    return measure(model, plan.old_val, plan.new.holdout, spec=plan.spec, cfg=plan.cfg, transform=plan.transforms[1],
                   device=device, old_classes=plan.old_classes, classes=classes)


def _train(plan: Plan, run_dir: Path, teacher: nn.Module) -> tuple[str, int | None, str | None]:
    """The new run's training through the loop (status, signal, error); or, with update.train=false, its
    checkpoint written at once: RUN's weights, the memory holding the new rows."""
    if not plan.settings.train:
        _remember_only(plan, run_dir)
        return "completed", None, None
    s = plan.settings

    def wrap(loss: nn.Module, model: nn.Module) -> nn.Module:
        if plan.offsets is not None:
            loss = PriorCorrection(loss, plan.offsets).to(next(model.parameters()).device)
        if s.distill > 0:
            loss = Distillation(loss, teacher, s.distill, s.temperature, plan.spec.task == "regression").attach(model)
        return loss
    result = fit(plan.cfg, run_dir, data_source=data_source(plan), loss_wrapper=wrap)
    if result.get("error"):
        log.error("nettrain: %s", result["error"])
    return result["status"], result.get("signal"), result.get("error")


def _remember_only(plan: Plan, run_dir: Path) -> None:
    """update.train=false: the new run is RUN's weights (the head grown for new classes, untrained) with the new
    rows in its memory, written as a run's checkpoint and metrics.json; no step is taken."""
    started = time.perf_counter()
    cfg = plan.cfg
    data = data_source(plan)(cfg.data, DataContext(seed=cfg.trainer.seed))
    model = build_trainable(cfg.model, data)
    same_classes = plan.spec.class_names == plan.ckpt["spec"]["class_names"]
    save_checkpoint({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                     "spec": plan.spec.to_dict(), "progress": asdict(Progress()), "record": {},
                     "data_fingerprint": data.fingerprint,
                     "decision": plan.ckpt.get("decision") if same_classes else None},
                    run_dir / "checkpoints" / "best.pt")
    val = join([plan.old_val, plan.new.holdout], plan.spec.preprocessing.get("pad_id", 0))
    figures = measure(model.eval(), val, None, spec=plan.spec, cfg=cfg, transform=plan.transforms[1],
                      device=torch.device("cpu"), old_classes=plan.old_classes, classes=plan.spec.num_classes)
    record = {"status": "completed", "epochs": 0, "best_epoch": None, "best": {f"val_{figures.metric}": figures.old},
              "seed": cfg.trainer.seed, "environment": environment(), "history": [],
              "remembered_rows": remembered_rows(model), "total_seconds": round(time.perf_counter() - started, 3)}
    atomic_write_text(run_dir / "metrics.json", json.dumps(record, indent=2, default=float) + "\n")
    log.info("update.train=false: no gradient step; the memory holds %s rows", f"{remembered_rows(model):,}")


@contextmanager
def _run_log(run_dir: Path) -> Iterator[None]:
    """The update's log lines into the new run's train.log too, as a train run's are."""
    handler = RunLogFile(str(run_dir / "train.log"))
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _record_hydra(run_dir: Path, cfg: DictConfig, arguments: list[str]) -> None:
    """.hydra/config.yaml and overrides.yaml, as a train run has them: `nettrain runs` lists the update with its
    arguments."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"update={cfg['update'].parent}", *arguments]), hydra_dir / "overrides.yaml")


def _write_record(run_dir: Path, lineage: dict[str, Any], verdict: dict[str, Any] | None) -> None:
    """The lineage and the gate's verdict into the new run's metrics.json; a rejected update's status says so."""
    record = read_metrics(run_dir) or {"history": []}
    record["lineage"], record["gate"] = lineage, verdict
    if record.get("status") == "interrupted":  # an update's run is not resumed: it is run again
        record.pop("resume_command", None)
        record["error"] = f"interrupted; run nettrain update {lineage['parent']} again"
    if (verdict or {}).get("verdict") == "rejected":
        record["status"] = "rejected"
    atomic_write_text(run_dir / "metrics.json", json.dumps(record, indent=2, default=float) + "\n")
