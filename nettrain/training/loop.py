"""The training loop, as a short driver over named phases (the way torchvision's reference scripts read):

    run = set_up(cfg, run_dir, ckpt)          data -> model -> loss, optimizer, schedule -> (resume) -> records
    for epoch in ...:
        train_one_epoch(run, epoch, ...)      steps: forward, loss, backward, optimizer, schedule, EMA
        validate(run)                         the val split, as eval will measure it
        end_epoch(run, ...)                   record, checkpoint, early stopping, the stop signal
    finish(run, status)                       the best weights, the confusion matrix, the records closed

Resume (the checkpoint's whole state restored before the first step), AMP (autocast and a grad scaler),
DDP (a wrapped model, collectives that are no-ops in one process) and divergence are woven into these
phases, not added around them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nettrain import runtime
from nettrain.data.base import Data, DataContext
from nettrain.data.build import build_data
from nettrain.evaluation.metrics import RunningTotals, evaluate, summarize
from nettrain.evaluation.scores import classification_metrics
from nettrain.inference.decision import Decision
from nettrain.inference.generate import PROMPT_TOKENS, sample_texts
from nettrain.models.build import before_data, build_trainable
from nettrain.models.losses import build_loss
from nettrain.models.tta import with_tta
from nettrain.records.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nettrain.records.console import StepBar, epoch_line, epoch_progress, final_summary
from nettrain.records.run_log import RunLog
from nettrain.records.rundir import remove_stale_temp_files
from nettrain.training import distributed
from nettrain.training.checkpoints import repair, restore, save_epoch
from nettrain.training.guards import DivergenceGuard, StopSignal
from nettrain.training.optim import build_optimizer, build_scheduler, is_constant
from nettrain.training.overfit import memorizing
from nettrain.training.state import Monitor, Progress, auto_monitor, planned_epochs
from nettrain.training.summary import startup

log = logging.getLogger("nettrain")

DataSource = Callable[[DictConfig, DataContext], Data]                     # (data config, context) -> Data
LossWrapper = Callable[[torch.nn.Module, torch.nn.Module], torch.nn.Module]  # (loss, model on its device) -> loss


@dataclass
class Run:
    """Everything a run's phases share: built by `set_up`, advanced by the others."""

    cfg: DictConfig
    run_dir: Path
    rt: runtime.Runtime
    data: Data
    decision: Decision | None                # binary classification's rule (None otherwise)
    model: torch.nn.Module                   # what the optimizer steps
    train_model: torch.nn.Module             # what the steps call: the model, wrapped by DDP and compiled
    ema: torch.optim.swa_utils.AveragedModel | None
    eval_model: torch.nn.Module              # what validation and checkpoints hold: the EMA's copy, or the model
    val_model: torch.nn.Module               # the eval model as validation sees it (with test-time augmentation)
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_schedule: bool                     # False for a constant lr: LambdaLR.step() is ~17 us of a tiny step
    scaler: torch.amp.GradScaler
    monitor: Monitor
    progress: Progress
    totals: RunningTotals                    # this epoch's [loss sum, correct, samples] so far
    runlog: RunLog | None                    # rank 0's records (None on the other ranks)
    batches_per_epoch: int
    steps_per_epoch: int
    max_epochs: int
    channels_last: bool

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint_state(self) -> dict[str, Any] | None:
        """The run's whole state, on rank 0 (None on the others). Every rank calls it: each adds its
        generators' state, so a resumed rank draws exactly what it would have drawn."""
        rngs = distributed.all_gather_object(rng_state(), self.rt)
        if not self.rt.is_main:
            return None
        return {
            "model": self.eval_model.state_dict(),                 # the weights validation measured
            "train_model": self.model.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "progress": asdict(self.progress), "epoch_totals": self.totals.tensor().cpu(),
            "config": OmegaConf.to_container(self.cfg, resolve=True), "spec": self.data.spec.to_dict(),
            "record": self.runlog.record if self.runlog is not None else {}, "rng": rngs,
            "data_fingerprint": self.data.fingerprint,
            "decision": self.decision and self.decision.state(self.progress.threshold),
        }

    def save_last(self) -> None:
        state = self.checkpoint_state()
        if state is not None:
            save_checkpoint(state, self.ckpt_dir / "last.pt")


def fit(cfg: DictConfig, run_dir: Path, ckpt: dict[str, Any] | None = None, *, data_source: DataSource | None = None,
        loss_wrapper: LossWrapper | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (continuing `ckpt` when given). Returns the final metrics record
    (status, best, history) with the best weights loaded into `result["model"]`. `data_source` (default
    build_data) builds the data from `cfg.data` (nettrain update: a run's replayed data and the new examples); `loss_wrapper` turns the
    config's loss and the model into the loss the steps minimize (update's distillation)."""
    run = set_up(cfg, run_dir, ckpt, data_source, loss_wrapper)
    status, diverged_at = "completed", None
    guard, vote = DivergenceGuard(run.rt, cfg.trainer.divergence_factor), distributed.StopVote(run.rt)
    with StopSignal() as stop, epoch_progress(enabled=run.rt.is_main) as bar, closing(run.data):
        for epoch in range(run.progress.epoch, run.max_epochs):
            steps = bar.start(f"epoch {epoch + 1}/{run.max_epochs}", run.batches_per_epoch, completed=run.progress.batch,
                              samples_per_step=cfg.data.batch_size * run.rt.world_size * _tokens_per_sample(run.data),
                              loss=run.totals.mean_loss)
            started = time.perf_counter()
            seen, diverged_at, stopping = train_one_epoch(run, epoch, steps, guard, lambda: vote(stop.signum is not None))
            stopping = vote.close() or stopping  # a vote still out is counted before any other collective
            diverged_at = diverged_at or guard.check()
            if diverged_at:
                status = "diverged"
                break
            if stopping and run.progress.batch < run.batches_per_epoch:
                status = "interrupted"
                run.save_last()
                break
            train, train_seconds = summarize_epoch(run), time.perf_counter() - started
            val = validate(run)
            status = end_epoch(run, epoch, train, val, started, train_seconds, seen)
            if status is None and distributed.any_rank(stop.signum is not None, run.rt):
                status = "interrupted"
            if status is not None:
                break
        status = status or "completed"
    distributed.barrier(run.rt)
    return finish(run, status, diverged_at, stop.signum)


def set_up(cfg: DictConfig, run_dir: Path, ckpt: dict[str, Any] | None, data_source: DataSource | None = None,
           loss_wrapper: LossWrapper | None = None) -> Run:
    """Everything a run needs before its first step: the runtime, data, model, loss, optimizer and schedule,
    the checkpoint's state restored (a resume), the records started, the model wrapped for DDP and compiled."""
    started = time.perf_counter()
    t = cfg.trainer
    rt = runtime.setup(t)
    before_data(cfg)  # the model's checks and downloads (and its say on the data's preprocessing) fail fast
    data = _build_data(cfg, rt, data_source)
    decision = Decision.for_run(cfg.get("threshold"), data.spec, data.train, cfg.early_stopping.monitor)  # binary only
    if cfg.early_stopping.monitor == "auto":  # resolved into the config: the checkpoint and a resume see the key
        cfg.early_stopping.monitor = auto_monitor(data.spec, decision)
    model = build_trainable(cfg.model, data)
    _choose_threads(t, rt, model, cfg.data.batch_size * _tokens_per_sample(data))
    channels_last = rt.channels_last and bool(getattr(model, "convolutional", False))
    model.to(rt.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(cfg.optimizer, model)
    batches = min(len(data.train), t.overfit_batches or t.limit_train_batches or len(data.train))
    steps = math.ceil(batches / t.accumulate_grad_batches)
    max_epochs, limits = planned_epochs(t, steps)
    if t.get("max_steps") and rt.is_main:
        log.info("trainer.max_steps=%d: %d epochs of %d steps%s", t.max_steps, max_epochs, steps,
                 f" (trainer.max_epochs={t.max_epochs} comes first)" if limits == ["trainer.max_epochs"] else "")
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema_decay))
           if t.ema_decay else None)
    eval_model = ema.module if ema is not None else model
    run = Run(cfg=cfg, run_dir=run_dir, rt=rt, data=data, decision=decision, model=model, train_model=model, ema=ema,
              eval_model=eval_model, val_model=with_tta(eval_model, t.get("tta"), data.spec),
              criterion=build_loss(cfg.loss, data.spec, data.class_weights).to(rt.device), optimizer=optimizer,
              scheduler=build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=steps, max_epochs=max_epochs),
              steps_schedule=not is_constant(cfg.scheduler),
              scaler=torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16), monitor=Monitor(cfg.early_stopping),
              progress=Progress(), totals=RunningTotals(rt.device, data.spec.task), runlog=None, batches_per_epoch=batches,
              steps_per_epoch=steps, max_epochs=max_epochs, channels_last=channels_last)
    if loss_wrapper is not None:
        run.criterion = loss_wrapper(run.criterion, model)
    if rt.distributed:
        # Each rank draws its own dropout masks from here on (timm seeds seed + rank too). The model and
        # its EMA copy were built from the shared seed, so every rank starts from the same weights.
        runtime.seed_everything(t.seed + rt.rank)
    if ckpt is not None:
        _resume(run, ckpt)
    _start_records(run, ckpt, started)
    if rt.distributed:
        run.train_model = distributed.wrap(model, rt.device)
    if t.compile:
        run.train_model = runtime.compile_model(run.train_model, t.compile)
    return run


def _build_data(cfg: DictConfig, rt: runtime.Runtime, data_source: DataSource | None) -> Data:
    resident = cfg.data.get("device_resident", "auto")
    return (data_source or build_data)(cfg.data, DataContext(
        seed=cfg.trainer.seed, device=rt.device, rank=rt.rank, world_size=rt.world_size,
        resident=resident is True or (resident == "auto" and rt.device.type == "cuda"),
        eval_batch_size=cfg.trainer.eval_batch_size or 4 * cfg.data.batch_size))


def _tokens_per_sample(data: Data) -> int:
    """A language model's sample is a block of tokens, each predicted: its rates and work count tokens."""
    return data.spec.input_shape[0] if data.spec.task == "lm" else 1


def _choose_threads(t: DictConfig, rt: runtime.Runtime, model: torch.nn.Module, batch_size: int) -> None:
    """trainer.threads=null on the CPU: chosen from the model and the cores (never the load), and recorded into
    the config, so the checkpoint carries it and a resume computes on as many threads."""
    if rt.device.type != "cpu" or t.threads:
        return
    threads, why = runtime.choose_threads(model, batch_size, rt.world_size)
    torch.set_num_threads(threads)
    t.threads = threads
    log.debug("CPU threads: %d (%s; set trainer.threads to choose)", threads, why)  # the start-up summary shows the count
    busy = runtime.busy_cores() if threads > 1 and rt.is_main else 0.0
    if busy >= 1:
        log.warning("%.1f of this machine's cores are busy with other work: training on %d threads anyway, so the "
                    "results do not depend on that load (trainer.threads=1 may be faster now, and computes "
                    "differently)", busy, threads)


def _resume(run: Run, ckpt: dict[str, Any]) -> None:
    """The checkpoint's training state into the run; the random generators last (everything before may draw)."""
    restore(ckpt, run.model, run.ema, run.optimizer, run.scheduler, run.scaler)
    run.progress = Progress(**ckpt["progress"])
    run.totals = RunningTotals(run.rt.device, run.data.spec.task, ckpt["epoch_totals"])
    set_rng_state(ckpt["rng"][run.rt.rank])
    fingerprint = run.data.fingerprint
    if run.rt.is_main and ckpt.get("data_fingerprint", fingerprint) != fingerprint:
        was, now = ckpt.get("data_fingerprint") or {}, fingerprint or {}
        log.warning("the data changed since the checkpoint (%s files then, %s now, contents differ): the resumed "
                    "run goes on, but it no longer replays the interrupted one exactly", was.get("files", "?"),
                    now.get("files", "?"))
    log.info("resumed from %s at epoch %d, step %d", ckpt["path"], run.progress.epoch + 1, run.progress.step)


def _start_records(run: Run, ckpt: dict[str, Any] | None, started: float) -> None:
    """Rank 0's records: metrics.json (as last.pt knows the run, whatever a kill left), the start-up summary,
    the loggers."""
    if not run.rt.is_main:
        return
    run.runlog = RunLog(run.run_dir, run.cfg, run.cfg.trainer.seed, resume_step=run.progress.step if ckpt else None,
                        started=started)
    if ckpt is not None:
        remove_stale_temp_files(run.run_dir)
        repair(ckpt, run.ckpt_dir)
        run.runlog.resume_from(ckpt["record"])
        run.runlog.write(status="running")
    facts = startup(run.cfg, run.rt, run.data, run.model, run.steps_per_epoch, run.max_epochs, run.channels_last)
    run.runlog.start(facts, run.data.spec.task)
    run.runlog.record["decision"] = run.decision.record() if run.decision is not None else None


def train_one_epoch(run: Run, epoch: int, steps: StepBar, guard: DivergenceGuard,
                    stop_asked: Any) -> tuple[int, tuple[int, float] | None, bool]:
    """The epoch's steps from where it stands (a resumed epoch goes on from its batch). Returns (batches seen,
    the first diverged step, whether the ranks agreed to stop)."""
    t, rt, progress = run.cfg.trainer, run.rt, run.progress
    # What the step reads, as plain values: a DictConfig lookup (~15 us) is a measurable part of a small model's step.
    accumulate, grad_clip, log_every, ckpt_every = t.accumulate_grad_batches, t.grad_clip, t.log_every_n_steps, \
        t.checkpoint_every_n_steps
    run.model.train()
    seen, diverged_at, stopping = 0, None, False
    order = 0 if t.overfit_batches else epoch  # overfit_batches: epoch 0's first batches, every epoch
    for i, (x, y) in enumerate(run.data.train.batches(order, start=progress.batch, device=rt.device), progress.batch):
        if i >= run.batches_per_epoch:
            break
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        boundary = (i + 1) % accumulate == 0 or i + 1 == run.batches_per_epoch
        # DDP all-reduces gradients only on the micro-batch that ends an accumulation.
        with run.train_model.no_sync() if rt.distributed and not boundary else nullcontext():
            with rt.autocast():
                outputs = run.train_model(x)
                loss = run.criterion(outputs, y)
            run.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
        run.totals.add(outputs, y, loss)
        progress.batch, seen = i + 1, seen + 1
        steps.advance()
        diverged_at = guard.update(loss, progress.step + 1)
        if diverged_at:
            break
        if not boundary:
            continue
        _optimizer_step(run, grad_clip)
        if progress.step % log_every == 0:
            diverged_at = guard.check()
            if diverged_at:
                break
            if run.runlog is not None:
                run.runlog.scalars({"loss/train_step": loss.item(), "lr": run.scheduler.get_last_lr()[0]}, progress.step)
        stopping = stop_asked()  # every rank agrees, at the same step
        if stopping:
            break
        if ckpt_every and progress.step % ckpt_every == 0:
            run.save_last()
    steps.close()
    return seen, diverged_at, stopping


def _optimizer_step(run: Run, grad_clip: float | None) -> None:
    """One optimizer step on the gradients accumulated so far, then the schedule and the weight average."""
    if grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.steps_schedule:
        run.scheduler.step()
    run.progress.step += 1
    if run.ema is not None:
        run.ema.update_parameters(run.model)


def summarize_epoch(run: Run) -> dict[str, float]:
    """The epoch's training metrics over every rank (reading them waits for the device to finish the epoch)."""
    totals = run.totals.tensor()
    distributed.all_reduce(totals, run.rt)
    return summarize(totals, run.data.spec.task, run.data.spec.char_level)


def validate(run: Run) -> dict[str, float]:
    """The val split's metrics, as `nettrain eval` will measure them (and a binary decision's, at its threshold)."""
    distributed.broadcast_buffers(run.model, run.rt)
    t, rt = run.cfg.trainer, run.rt
    val, outputs, targets = evaluate(run.val_model, run.data.val, run.criterion, device=rt.device, task=run.data.spec.task,
                                     autocast=rt.autocast, limit=t.limit_val_batches, collect=run.decision is not None,
                                     reduce=lambda v: distributed.all_reduce(v, rt), char_level=run.data.spec.char_level)
    if run.decision is not None:  # binary: the rare class's precision, recall, F1 on the whole split, at its threshold
        run.progress.threshold, decided = run.decision.measure(outputs, targets, lambda v: distributed.all_gather_rows(v, rt))
        val |= decided
    return val


def end_epoch(run: Run, epoch: int, train: dict[str, float], val: dict[str, float], started: float, train_seconds: float,
              seen: int) -> str | None:
    """Record the epoch, checkpoint it, and decide whether to go on: the status to stop with, or None."""
    progress = run.progress
    progress.epoch, progress.batch = epoch + 1, 0
    run.totals = RunningTotals(run.rt.device, run.data.spec.task)
    samples = seen * run.cfg.data.batch_size * run.rt.world_size
    record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()},
              "lr": run.scheduler.get_last_lr()[0], "step": progress.step,
              "seconds": round(time.perf_counter() - started, 3),
              "train_samples_per_sec": round(samples / max(train_seconds, 1e-9), 1)}
    if run.data.spec.task == "lm":
        record["train_tokens_per_sec"] = round(record["train_samples_per_sec"] * _tokens_per_sample(run.data), 1)
    value = record.get(run.monitor.key, math.nan)
    improved = run.monitor.update(progress, value, epoch + 1)
    if run.runlog is not None:
        _log_epoch(run, record, improved)
        if run.data.spec.task == "lm":
            _log_samples(run, progress.step)
    state = run.checkpoint_state()  # after _log_epoch: the checkpoint carries this epoch's record
    if state is not None:
        save_epoch(state, run.ckpt_dir, progress, run.monitor, run.cfg.checkpoint.save_top_k, improved, value, epoch + 1)
        run.runlog.write(status="running")
    if run.monitor.exhausted(progress):
        log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                 run.monitor.key, progress.stale_epochs, progress.best, progress.best_epoch)
        return "stopped_early"
    return None


def _log_epoch(run: Run, record: dict[str, Any], improved: bool) -> None:
    """An epoch's record into metrics.json's history, the loggers and the console (with any overfitting warning)."""
    runlog, progress = run.runlog, run.progress
    history = runlog.record["history"] + [record]
    best_record = history[progress.best_epoch - 1] if progress.best_epoch else {}
    runlog.record.update(history=history, epochs=record["epoch"], best_epoch=progress.best_epoch,
                         best={k: v for k, v in best_record.items() if k.startswith("val_") or k == run.monitor.key})
    runlog.epoch(progress.step)
    log.info(epoch_line(record, run.max_epochs, improved))
    warning = None if progress.overfit_warned else memorizing(history, run.cfg.early_stopping.overfit_patience)
    if warning:
        progress.overfit_warned = True
        log.warning(warning)
        runlog.text("warnings", warning, progress.step)


def _log_samples(run: Run, step: int) -> None:
    """A language model's texts, written at this validation from the start of the validation text, to TensorBoard:
    how its writing grows is seen there, next to its loss."""
    count, tokens, ids = run.cfg.model.get("samples", 0), run.cfg.model.get("sample_tokens", 200), \
        getattr(run.data.val, "ids", None)
    if not count or ids is None:
        return
    for i, text in enumerate(sample_texts(run.eval_model, run.data.spec, ids[:PROMPT_TOKENS], count, tokens,
                                          seed=run.cfg.trainer.seed, autocast=run.rt.autocast)):
        run.runlog.text(f"samples/{i}", "\n".join("    " + line for line in text.splitlines()), step)  # as code: lines kept


def finish(run: Run, status: str, diverged_at: tuple[int, float] | None, signum: int | None) -> dict[str, Any]:
    """The run's result, with the best weights loaded (not the last: those may be past the point of
    overfitting); its confusion matrix and final records written."""
    progress = run.progress
    result: dict[str, Any] = {"status": status, "best_epoch": progress.best_epoch, "monitor": run.monitor.key,
                              "best_value": progress.best, "run_dir": str(run.run_dir), "signal": signum,
                              "history": run.runlog.record["history"] if run.runlog else []}
    if status == "diverged":
        step, value = diverged_at
        lr = run.optimizer.param_groups[0]["lr"]
        result["error"] = (f"training diverged: loss={value:.4g} at step {step} (epoch {progress.epoch + 1}) with lr={lr:.3g}; "
                           f"the learning rate is probably too high: try optimizer.lr={run.cfg.optimizer.lr / 10:.3g}")
    threshold = None
    if (run.ckpt_dir / "best.pt").is_file():
        best = load_checkpoint(run.ckpt_dir / "best.pt")
        run.eval_model.load_state_dict(best["model"])
        threshold = (best.get("decision") or {}).get("threshold")
    result["model"] = run.eval_model
    if run.runlog is None:
        return result
    if run.data.spec.task == "classification" and progress.best_epoch and status != "interrupted" and not run.rt.distributed:
        _confusion_matrix(run, threshold)  # (under DDP one rank holds only its shard of the val split)
    run.runlog.write(status=status, **({"error": result["error"]} if "error" in result else {}),
                     **({"resume_command": f"nettrain train resume={run.run_dir}"} if status == "interrupted" else {}))
    run.runlog.close(dict(run.runlog.record["best"]) | {"epochs": run.runlog.record["epochs"]})
    final_summary(result, run.runlog.record, run.run_dir)
    return result


def _confusion_matrix(run: Run, threshold: float | None) -> None:
    """The best model's confusion matrix on the val split, decided as validation decided."""
    t = run.cfg.trainer
    _, outputs, targets = evaluate(run.val_model, run.data.val, run.criterion, device=run.rt.device, task=run.data.spec.task,
                                   autocast=run.rt.autocast, limit=t.limit_val_batches, collect=True)
    if targets is None or targets.dim() != 1:  # single-label only: multi-label has no confusion matrix
        return
    predicted = run.decision.predict(outputs, threshold) if run.decision is not None else outputs.argmax(-1)
    matrix = classification_metrics(predicted, targets, run.data.spec.class_names)["confusion_matrix"]
    run.runlog.confusion_matrix(matrix, run.data.spec.class_names, run.progress.step)
