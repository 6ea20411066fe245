"""The training loop. Builders make the pieces; `fit` runs them, top to bottom:
data -> model -> loss, optimizer, schedule -> (resume) -> epochs of steps, validation, checkpoints.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nettrain import distributed, runtime
from nettrain.checkpoint import atomic_write_bytes, load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from nettrain.config import monitor_mode
from nettrain.data import DataContext, build_data
from nettrain.data.spec import DataSpec
from nettrain.decision import Decision
from nettrain.errors import UserError
from nettrain.logs import console, epoch_line, epoch_progress, final_summary
from nettrain.losses import build_loss
from nettrain.metrics import RunningTotals, evaluate, summarize
from nettrain.models import before_data, build_trainable
from nettrain.models.tta import with_tta
from nettrain.optim import build_optimizer, build_scheduler
from nettrain.overfit import memorizing
from nettrain.rundir import remove_stale_temp_files
from nettrain.summary import startup
from nettrain.tracking import RunLog

log = logging.getLogger("nettrain")


@dataclass
class Progress:
    """Everything the loop carries from step to step; a checkpoint stores it, resume restores it."""

    epoch: int = 0                   # the epoch in progress (0-based)
    batch: int = 0                   # batches of `epoch` already trained (a mid-epoch checkpoint)
    step: int = 0                    # optimizer steps so far
    best: float | None = None        # best value of the monitored metric
    best_epoch: int | None = None    # 1-based
    stale_epochs: int = 0            # epochs since the monitored metric last improved
    overfit_warned: bool = False
    top_k: list[list[Any]] = field(default_factory=list)   # [value, file name], best first
    threshold: float | None = None   # binary classification: the last validation's decision threshold (None: argmax)


class Monitor:
    """Early stopping on `early_stopping.monitor`; also decides which checkpoint is best."""

    def __init__(self, cfg: DictConfig) -> None:
        self.key, self.patience, self.min_delta = cfg.monitor, cfg.patience, cfg.min_delta
        self.mode = monitor_mode(cfg.monitor, cfg.mode)

    def update(self, progress: Progress, value: float, epoch: int) -> bool:
        """Record an epoch's monitored value; True when it beats the best so far by more than min_delta."""
        if progress.best is None:
            improved = math.isfinite(value)
        elif self.mode == "min":
            improved = value < progress.best - self.min_delta
        else:
            improved = value > progress.best + self.min_delta
        if improved:
            progress.best, progress.best_epoch, progress.stale_epochs = value, epoch, 0
        else:
            progress.stale_epochs += 1
        return improved

    def exhausted(self, progress: Progress) -> bool:
        return bool(self.patience) and progress.stale_epochs >= self.patience


def auto_monitor(spec: DataSpec, decision: Decision | None) -> str:
    """What `early_stopping.monitor=auto` watches: the rare class's F1 when a threshold is tuned for
    it (accuracy hides a rare class: 97 % is what always saying "no failure" scores), accuracy for
    other classification (with label smoothing the val loss bottoms out before the accuracy peaks),
    the loss for regression."""
    if spec.task == "regression":
        return "val_loss"
    return "val_f1" if decision is not None and decision.tune else "val_accuracy"


def planned_epochs(trainer: DictConfig, steps_per_epoch: float) -> tuple[int, list[str]]:
    """The epochs a run trains, and the limits that set them: trainer.max_epochs, or fewer when
    trainer.max_steps comes first, in whole epochs (the last may pass max_steps; every epoch is
    validated and scheduled alike); both when they agree. Derived from the config and the data
    alone, so a resumed run plans what the interrupted one planned."""
    limits = {"trainer.max_epochs": trainer.max_epochs}
    if trainer.get("max_steps"):
        limits["trainer.max_steps"] = math.ceil(trainer.max_steps / steps_per_epoch)
    epochs = min(limits.values())
    return epochs, [key for key, n in limits.items() if n == epochs]


class StopSignal:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. a launcher's worker thread): no handler
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            console.print("[red]second interrupt: exiting now[/red]")
            raise SystemExit(130)
        self.signum = signum
        log.warning("%s received: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class DivergenceGuard:
    """Finds the first step whose loss is NaN/Inf or has blown up past `factor` x the first step's
    loss (at least 1): a learning rate too high sends the loss to 1e7 long before it turns NaN.
    On the CPU reading the loss costs nothing, so it checks every step. On a GPU a step only sets its
    loss aside; every `every` steps they are judged together on the device (a few kernels, where one
    step's judgement took ten) and the verdict is read at log time, so no step waits for the host.
    Under DDP it is read at log time too, and the ranks agree (a rank's NaN stops them all at the
    same step, never a hang)."""

    def __init__(self, rt: runtime.Runtime, factor: float | None, every: int = 32) -> None:
        self.rt, self.every = rt, every
        self.eager = rt.device.type == "cpu" and not rt.distributed
        self.factor = factor if factor is not None else math.inf
        self.limit: torch.Tensor | float | None = None
        self.pending: list[tuple[torch.Tensor, int]] = []
        self.bad = torch.tensor([-1.0, 0.0], device=rt.device)  # [step, loss] of the first bad step; -1: none yet

    def update(self, loss: torch.Tensor, step: int) -> tuple[int, float] | None:
        if self.eager:
            value = loss.item()
            if self.limit is None:
                self.limit = max(value, 1.0) * self.factor
            return None if math.isfinite(value) and value <= self.limit else (step, value)
        self.pending.append((loss.detach(), step))
        if len(self.pending) == self.every:
            self._judge()
        return None

    def _judge(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for loss, _ in self.pending]).float()
        steps = runtime.to_device(self.rt.device, torch.tensor([float(step) for _, step in self.pending]))
        self.pending.clear()
        if self.limit is None:
            self.limit = losses[0].clamp(min=1.0) * self.factor
        bad = ~losses.isfinite() | (losses > self.limit)
        first = bad.int().argmax()  # argmax gives the first of equal maxima: the first bad step (0 when none is)
        found = (self.bad[0] < 0) & bad.any()
        self.bad = torch.where(found, torch.stack([steps[first], losses[first]]), self.bad)

    def check(self) -> tuple[int, float] | None:
        if self.eager:
            return None
        self._judge()
        bad = distributed.all_gather(self.bad, self.rt)  # one [step, loss] row per rank
        bad = bad[bad[:, 0] >= 0]
        if not len(bad):
            return None
        step, value = bad[bad[:, 0].argmin()].tolist()
        return int(step), value


def fit(cfg: DictConfig, run_dir: Path, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (continuing `ckpt` when given). Returns the final metrics record
    (status, best, history) with the best weights loaded into `result["model"]`."""
    fit_started = time.perf_counter()
    t = cfg.trainer
    rt = runtime.setup(t)
    before_data(cfg)  # the model's checks and downloads (and its say on the data's preprocessing) fail fast
    resident = cfg.data.get("device_resident", "auto")
    data = build_data(cfg.data, DataContext(
        seed=t.seed, device=rt.device, rank=rt.rank, world_size=rt.world_size,
        resident=resident is True or (resident == "auto" and rt.device.type == "cuda"),
        eval_batch_size=t.eval_batch_size or 4 * cfg.data.batch_size))
    spec = data.spec
    decision = Decision.for_run(cfg.get("threshold"), spec, data.train, cfg.early_stopping.monitor)  # binary only
    if cfg.early_stopping.monitor == "auto":  # resolved into the config: the checkpoint and a resume see the key
        cfg.early_stopping.monitor = auto_monitor(spec, decision)
    model = build_trainable(cfg.model, data)
    if rt.device.type == "cpu" and not t.threads:
        threads, why = runtime.choose_threads(model, cfg.data.batch_size, rt.world_size)
        torch.set_num_threads(threads)
        t.threads = threads  # into the checkpoint's config: a resume computes on as many threads
        log.debug("CPU threads: %d (%s; set trainer.threads to choose)", threads, why)  # the start-up summary shows the count
        busy = runtime.busy_cores() if threads > 1 and rt.is_main else 0.0
        if busy >= 1:
            log.warning("%.1f of this machine's cores are busy with other work: training on %d threads anyway, so the "
                        "results do not depend on that load (trainer.threads=1 may be faster now, and computes "
                        "differently)", busy, threads)
    channels_last = rt.channels_last and model.convolutional
    model.to(rt.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    criterion = build_loss(cfg.loss, spec, data.class_weights).to(rt.device)
    optimizer = build_optimizer(cfg.optimizer, model)
    accumulate = t.accumulate_grad_batches
    batches_per_epoch = min(len(data.train), t.overfit_batches or t.limit_train_batches or len(data.train))
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    max_epochs, limits = planned_epochs(t, steps_per_epoch)
    if t.get("max_steps") and rt.is_main:
        log.info("trainer.max_steps=%d: %d epochs of %d steps%s", t.max_steps, max_epochs, steps_per_epoch,
                 f" (trainer.max_epochs={t.max_epochs} comes first)" if limits == ["trainer.max_epochs"] else "")
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema_decay))
           if t.ema_decay else None)
    eval_model = ema.module if ema is not None else model
    val_model = with_tta(eval_model, t.get("tta"), spec)  # what validation measures: the mirror too, with tta=flip
    monitor = Monitor(cfg.early_stopping)
    progress = Progress()
    totals = RunningTotals(rt.device, spec.task)  # this epoch's [loss sum, correct, samples]
    if rt.distributed:
        # Each rank draws its own dropout masks from here on (timm seeds seed + rank too). The model and
        # its EMA copy were built from the shared seed, so every rank starts from the same weights.
        runtime.seed_everything(t.seed + rt.rank)
    if ckpt is not None:
        _restore(ckpt, model, ema, optimizer, scheduler, scaler)
        progress = Progress(**ckpt["progress"])
        totals = RunningTotals(rt.device, spec.task, ckpt["epoch_totals"])
        set_rng_state(ckpt["rng"][rt.rank])  # last: everything above may draw random numbers
        if rt.is_main and ckpt.get("data_fingerprint", data.fingerprint) != data.fingerprint:
            was, now = ckpt.get("data_fingerprint") or {}, data.fingerprint or {}
            log.warning("the data changed since the checkpoint (%s files then, %s now, contents differ): the resumed "
                        "run goes on, but it no longer replays the interrupted one exactly", was.get("files", "?"),
                        now.get("files", "?"))
        log.info("resumed from %s at epoch %d, step %d", ckpt["path"], progress.epoch + 1, progress.step)

    runlog = RunLog(run_dir, cfg, t.seed, resume_step=progress.step if ckpt else None, started=fit_started) if rt.is_main else None
    if runlog is not None and ckpt is not None:
        remove_stale_temp_files(run_dir)
        _repair_checkpoints(ckpt, run_dir / "checkpoints")
        runlog.resume_from(ckpt["record"])
        runlog.write(status="running")  # metrics.json as last.pt knows the run, whatever a kill left
    if runlog is not None:
        runlog.start(startup(cfg, rt, data, model, steps_per_epoch, max_epochs, channels_last), spec.task)
        runlog.record["decision"] = decision.record() if decision is not None else None

    train_model: torch.nn.Module = model
    if rt.distributed:
        train_model = distributed.wrap(model, rt.device)
    if t.compile:
        train_model = runtime.compile_model(train_model)

    ckpt_dir = run_dir / "checkpoints"

    def checkpoint_state() -> dict[str, Any] | None:
        """The run's whole state, on rank 0 (None on the others). Every rank calls it: each adds its
        generators' state, so a resumed rank draws exactly what it would have drawn."""
        rngs = distributed.all_gather_object(rng_state(), rt)
        if not rt.is_main:
            return None
        return {
            "model": eval_model.state_dict(),                 # the weights validation measured
            "train_model": model.state_dict() if ema is not None else None,
            "ema_updates": int(ema.n_averaged) if ema is not None else 0,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "progress": asdict(progress), "epoch_totals": totals.tensor().cpu(),
            "config": OmegaConf.to_container(cfg, resolve=True), "spec": spec.to_dict(),
            "record": runlog.record if runlog is not None else {}, "rng": rngs,
            "data_fingerprint": data.fingerprint, "decision": decision and decision.state(progress.threshold),
        }

    def save_last() -> None:
        state = checkpoint_state()
        if state is not None:
            save_checkpoint(state, ckpt_dir / "last.pt")

    guard = DivergenceGuard(rt, t.divergence_factor)
    vote = distributed.StopVote(rt)
    status, diverged_at, stopping = "completed", None, False
    samples_per_step = cfg.data.batch_size * rt.world_size
    # What the step reads, as plain values: a DictConfig lookup (~15 us) is a measurable part of a small model's step.
    grad_clip, log_every, ckpt_every = t.grad_clip, t.log_every_n_steps, t.checkpoint_every_n_steps
    with StopSignal() as stop, epoch_progress(enabled=rt.is_main) as bar, closing(data):
        for epoch in range(progress.epoch, max_epochs):
            model.train()
            steps = bar.start(f"epoch {epoch + 1}/{max_epochs}", batches_per_epoch, completed=progress.batch,
                              samples_per_step=samples_per_step, loss=totals.mean_loss)
            started, seen = time.perf_counter(), 0
            # overfit_batches: the same first batches every epoch (epoch 0's order), to check the model can learn.
            order = 0 if t.overfit_batches else epoch
            for i, (x, y) in enumerate(data.train.batches(order, start=progress.batch, device=rt.device), progress.batch):
                if i >= batches_per_epoch:
                    break
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                boundary = (i + 1) % accumulate == 0 or i + 1 == batches_per_epoch
                # DDP all-reduces gradients only on the micro-batch that ends an accumulation.
                with (train_model.no_sync() if rt.distributed and not boundary else nullcontext()):
                    with rt.autocast():
                        outputs = train_model(x)
                        loss = criterion(outputs, y)
                    scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
                totals.add(outputs, y, loss)
                progress.batch, seen = i + 1, seen + 1
                steps.advance()
                diverged_at = guard.update(loss, progress.step + 1)
                if diverged_at:
                    break
                if not boundary:
                    continue
                if grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                progress.step += 1
                if ema is not None:
                    ema.update_parameters(model)
                if progress.step % log_every == 0:
                    diverged_at = guard.check()
                    if diverged_at:
                        break
                    if runlog is not None:
                        runlog.scalars({"loss/train_step": loss.item(), "lr": scheduler.get_last_lr()[0]}, progress.step)
                stopping = vote(stop.signum is not None)  # every rank agrees, at the same step
                if stopping:
                    break
                if ckpt_every and progress.step % ckpt_every == 0:
                    save_last()
            steps.close()
            stopping = vote.close() or stopping  # a vote still out is counted before any other collective
            diverged_at = diverged_at or guard.check()
            if diverged_at:
                status = "diverged"
                break
            if stopping and progress.batch < batches_per_epoch:
                status = "interrupted"
                save_last()
                break

            # End of epoch: validate, record, checkpoint, decide whether to go on.
            epoch_totals = totals.tensor()
            distributed.all_reduce(epoch_totals, rt)
            train = summarize(epoch_totals, spec.task)  # reading the totals waits for the device to finish the epoch
            train_seconds = time.perf_counter() - started
            distributed.broadcast_buffers(model, rt)
            val, outputs, targets = evaluate(val_model, data.val, criterion, device=rt.device, task=spec.task,
                                             autocast=rt.autocast, limit=t.limit_val_batches, collect=decision is not None,
                                             reduce=lambda v: distributed.all_reduce(v, rt))
            if decision is not None:  # binary: the rare class's precision, recall, F1 on the whole split, at its threshold
                progress.threshold, decided = decision.measure(outputs, targets, lambda v: distributed.all_gather_rows(v, rt))
                val |= decided
            progress.epoch, progress.batch = epoch + 1, 0
            totals = RunningTotals(rt.device, spec.task)
            record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
                      **{f"val_{k}": v for k, v in val.items()}, "lr": scheduler.get_last_lr()[0],
                      "step": progress.step, "seconds": round(time.perf_counter() - started, 3),
                      "train_samples_per_sec": round(seen * samples_per_step / max(train_seconds, 1e-9), 1)}
            value = record.get(monitor.key, math.nan)
            improved = monitor.update(progress, value, epoch + 1)
            if runlog is not None:
                _log_epoch(runlog, record, train, val, progress, monitor, cfg, max_epochs, improved)
            state = checkpoint_state()  # after _log_epoch: the checkpoint carries this epoch's record
            if state is not None:
                _save_epoch(state, ckpt_dir, progress, monitor, cfg.checkpoint.save_top_k, improved, value, epoch + 1)
                runlog.write(status="running")
            if monitor.exhausted(progress):
                status = "stopped_early"
                log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                         monitor.key, progress.stale_epochs, progress.best, progress.best_epoch)
                break
            if distributed.any_rank(stop.signum is not None, rt):
                status = "interrupted"
                break

    distributed.barrier(rt)
    result: dict[str, Any] = {"status": status, "best_epoch": progress.best_epoch, "monitor": monitor.key,
                              "best_value": progress.best, "run_dir": str(run_dir),
                              "signal": stop.signum, "history": runlog.record["history"] if runlog else []}
    if status == "diverged":
        step, value = diverged_at
        lr = optimizer.param_groups[0]["lr"]
        result["error"] = (f"training diverged: loss={value:.4g} at step {step} (epoch {progress.epoch + 1}) with "
                           f"lr={lr:.3g}; the learning rate is probably too high: try optimizer.lr={cfg.optimizer.lr / 10:.3g}")
    best_threshold = None
    if (ckpt_dir / "best.pt").is_file():
        # The final model is the best one, not the last (which may be past the point of overfitting).
        best = load_checkpoint(ckpt_dir / "best.pt")
        eval_model.load_state_dict(best["model"])
        best_threshold = (best.get("decision") or {}).get("threshold")
    result["model"] = eval_model
    if runlog is not None and spec.task == "classification" and progress.best_epoch and status != "interrupted" \
            and not rt.distributed:  # one rank holds only its shard of the val split
        _, outputs, targets = evaluate(val_model, data.val, criterion, device=rt.device, task=spec.task,
                                       autocast=rt.autocast, limit=t.limit_val_batches, collect=True)
        if targets is not None and targets.dim() == 1:  # single-label: multi-label has no confusion matrix
            predicted = decision.predict(outputs, best_threshold) if decision is not None else outputs.argmax(-1)
            runlog.confusion_matrix(predicted, targets, spec.class_names, progress.step)
    if runlog is not None:
        runlog.write(status=status, **({"error": result["error"]} if "error" in result else {}),
                     **({"resume_command": f"nettrain train resume={run_dir}"} if status == "interrupted" else {}))
        runlog.close({k: v for k, v in runlog.record["best"].items()} | {"epochs": runlog.record["epochs"]})
        final_summary(result, runlog.record, run_dir)
    return result


def _restore(ckpt: dict[str, Any], model: torch.nn.Module, ema: torch.nn.Module | None,
             optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler) -> None:
    """Load a checkpoint's training state (not the RNGs: those go last, after everything that draws)."""
    load_weights(model, ckpt.get("train_model") or ckpt["model"], ckpt["path"], "the run's model")
    if ema is not None:
        load_weights(ema.module, ckpt["model"], ckpt["path"], "the run's weight average")
        ema.n_averaged.fill_(ckpt.get("ema_updates", 0))
    saved, built = len(ckpt["optimizer"]["param_groups"]), len(optimizer.param_groups)
    if saved != built:  # load_state_dict would stop with a ValueError
        raise UserError(f"cannot resume {ckpt['path']}: its optimizer state has {saved} parameter group(s), this "
                        f"run's optimizer {built} (optimizer or model settings differ); start a new run instead")
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])


def _log_epoch(runlog: RunLog, record: dict[str, Any], train: dict[str, float], val: dict[str, float],
               progress: Progress, monitor: Monitor, cfg: DictConfig, max_epochs: int, improved: bool) -> None:
    """An epoch's record into metrics.json's history, the loggers and the console (with any overfitting warning)."""
    history = runlog.record["history"] + [record]
    best_record = history[progress.best_epoch - 1] if progress.best_epoch else {}
    runlog.record.update(history=history, epochs=record["epoch"], best_epoch=progress.best_epoch,
                         best={k: v for k, v in best_record.items() if k.startswith("val_") or k == monitor.key})
    runlog.epoch(progress.step)
    log.info(epoch_line(record, max_epochs, improved))
    warning = None if progress.overfit_warned else memorizing(history, cfg.early_stopping.overfit_patience)
    if warning:
        progress.overfit_warned = True
        log.warning(warning)
        runlog.text("warnings", warning, progress.step)




def _save_epoch(state: dict[str, Any], ckpt_dir: Path, progress: Progress, monitor: Monitor, top_k: int,
                improved: bool, value: float, epoch: int) -> None:
    """last.pt always; best.pt when the monitored metric improved; the top-k by that metric.

    The order makes a kill at any instant repairable (`_repair_checkpoints`): a new top-k file
    first (nothing names it yet), then last.pt, the commit point that resume reads, then best.pt;
    top-k files that dropped out are deleted only once last.pt no longer lists them."""
    paths, dropped = [], []
    if top_k and math.isfinite(value):
        name = f"epoch={epoch:03d}-{monitor.key}={value:.4f}.pt"
        ranked = sorted([*progress.top_k, [value, name]], key=lambda e: e[0], reverse=monitor.mode == "max")
        if [value, name] in ranked[:top_k]:
            paths.append(ckpt_dir / name)
        dropped = [name for _, name in ranked[top_k:]]
        progress.top_k = ranked[:top_k]
        state["progress"] = asdict(progress)
    paths.append(ckpt_dir / "last.pt")
    if improved:
        paths.append(ckpt_dir / "best.pt")
    save_checkpoint(state, *paths)
    for name in dropped:
        _remove(ckpt_dir / name)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # e.g. a permission error: an extra file on disk loses nothing
        log.warning("could not delete %s: %s", path, e.strerror or e)


def _repair_checkpoints(ckpt: dict[str, Any], ckpt_dir: Path) -> None:
    """Bring best.pt and the top-k files in line with last.pt after a kill between `_save_epoch`'s
    renames: a best.pt one epoch behind is replaced by last.pt (that epoch was the best), a top-k
    file last.pt does not list is deleted, a missing one of last.pt's own epoch is restored."""
    last = ckpt_dir / "last.pt"
    if Path(ckpt["path"]) != last:
        return  # resuming from another file (best.pt, a top-k one): nothing to compare against
    progress = ckpt["progress"]
    epoch_end = progress["batch"] == 0

    def copy_last(to: Path) -> None:
        log.warning("repairing %s from %s (a kill between checkpoint writes)", to.name, last.name)
        atomic_write_bytes(last.read_bytes(), to)

    best = ckpt_dir / "best.pt"
    if epoch_end and progress["best_epoch"] == progress["epoch"] and _saved_epoch(best) != progress["epoch"]:
        copy_last(best)
    listed = {name for _, name in progress["top_k"]}
    for path in ckpt_dir.glob("epoch=*.pt"):
        if path.name not in listed:
            _remove(path)
    for name in listed:
        if not (ckpt_dir / name).is_file() and epoch_end and name.startswith(f"epoch={progress['epoch']:03d}-"):
            copy_last(ckpt_dir / name)


def _saved_epoch(path: Path) -> int | None:
    """The epoch count a checkpoint was saved at (None when it is missing or unreadable)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["progress"]["epoch"]
    except Exception:  # noqa: BLE001 - missing, torn or foreign: all mean "repair it"
        return None

