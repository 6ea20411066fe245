"""`nettrain lr-find`: the learning-rate range test (L. Smith, 2015).

The model trains one batch per step while the lr grows exponentially from `lr_find.min_lr` to
`lr_find.max_lr`; the test stops once the smoothed loss explodes. The suggested lr is a tenth of
the lr where the smoothed loss was lowest: past that point the steps are too large to keep
lowering the loss, and a tenth of it leaves a margin for a whole run. The model, data, loss and
optimizer come from the same builders and configs as `nettrain train`.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nettrain.config import validate
from nettrain.errors import UserError, invalid

log = logging.getLogger("nettrain")

# Exponential moving average of the loss: single batches are too noisy to compare, and a longer
# average lags behind the lr (0.98, a 50-step window, puts the minimum two decades too late).
SMOOTHING = 0.9


@dataclass
class Curve:
    lrs: list[float]          # the lr of each step
    losses: list[float]       # each step's batch loss
    smoothed: list[float]     # bias-corrected moving average of `losses`
    exploded: bool = False    # stopped because the loss exploded (else it reached max_lr)

    @property
    def stop(self) -> str:
        return f"the loss exploded at lr={self.lrs[-1]:.3g}" if self.exploded else f"reached lr={self.lrs[-1]:.3g}"

    @property
    def best_index(self) -> int:
        finite = [(v, i) for i, v in enumerate(self.smoothed) if math.isfinite(v)]
        return min(finite)[1]

    @property
    def suggested_lr(self) -> float:
        return self.lrs[self.best_index] / 10


def range_test(cfg: DictConfig) -> Curve:
    """Train `cfg`'s model with an exponentially growing lr until the loss explodes."""
    import torch

    from nettrain import runtime
    from nettrain.data import DataContext, build_data
    from nettrain.logs import step_bar
    from nettrain.losses import build_loss
    from nettrain.models import before_data, build_trainable
    from nettrain.optim import build_optimizer

    lf = cfg.lr_find
    rt = runtime.setup(cfg.trainer)
    before_data(cfg)
    data = build_data(cfg.data, DataContext(seed=cfg.trainer.seed, device=rt.device))
    model = build_trainable(cfg.model, data)
    model.to(rt.device).train()
    criterion = build_loss(cfg.loss, data.spec, data.class_weights).to(rt.device)
    optimizer = build_optimizer(cfg.optimizer, model)
    for group in optimizer.param_groups:
        group["lr"] = lf.min_lr
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(lf.max_lr / lf.min_lr) ** (1 / (lf.steps - 1)))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

    curve = Curve([], [], [])
    average = 0.0
    batches = itertools.chain.from_iterable(data.train.batches(epoch, device=rt.device) for epoch in itertools.count())
    with step_bar("lr range test", lf.steps, samples_per_step=cfg.data.batch_size, loss=lambda: curve.smoothed[-1]) as bar:
        for step, (x, y) in zip(range(lf.steps), batches):
            with rt.autocast():
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            value = loss.item()
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            curve.lrs.append(schedule.get_last_lr()[0])
            curve.losses.append(value)
            curve.smoothed.append(smoothed)
            bar.advance()
            if not math.isfinite(smoothed) or smoothed > lf.diverge_factor * min(curve.smoothed):
                curve.exploded = True
                break
            schedule.step()
    return curve


def curve_figure(curve: Curve, title: str) -> Any:
    """Loss against lr (log scale), the suggested lr marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.2))
    finite = [(lr, raw, s) for lr, raw, s in zip(curve.lrs, curve.losses, curve.smoothed) if math.isfinite(s)]
    lrs, raw, smoothed = (list(column) for column in zip(*finite))
    ax.plot(lrs, raw, color="tab:blue", alpha=0.3, linewidth=1, label="batch loss")
    ax.plot(lrs, smoothed, color="tab:blue", label="smoothed loss")
    ax.axvline(curve.suggested_lr, color="tab:green", linestyle="--", label=f"suggested lr {curve.suggested_lr:.2e}")
    ax.plot([curve.lrs[curve.best_index]], [curve.smoothed[curve.best_index]], marker="o", color="tab:red",
            linestyle="none", label=f"lowest loss at lr {curve.lrs[curve.best_index]:.2e}")
    ax.set_xscale("log")
    # The exploding tail would squash the useful part of the curve.
    top, bottom = max(smoothed[: curve.best_index + 1]), min(raw + smoothed)
    span = max(top - bottom, 1e-3 * max(abs(top), 1.0))
    ax.set_ylim(bottom - 0.05 * span, top + 0.3 * span)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    figure.tight_layout()
    return figure


def write_outputs(curve: Curve, run_dir: Path, title: str) -> Path:
    """The curve as lr_find.png and in TensorBoard (scalars by step, and the figure); returns the PNG."""
    from torch.utils.tensorboard import SummaryWriter

    figure = curve_figure(curve, title)
    png = run_dir / "lr_find.png"
    figure.savefig(png, dpi=120)
    with SummaryWriter(str(run_dir)) as writer:
        for step, (lr, loss, smoothed) in enumerate(zip(curve.lrs, curve.losses, curve.smoothed)):
            writer.add_scalar("lr_find/lr", lr, step)
            writer.add_scalar("lr_find/loss", loss, step)
            writer.add_scalar("lr_find/smoothed_loss", smoothed, step)
        writer.add_figure("lr_find/curve", figure)
        writer.add_text("lr_find/suggested_lr", f"{curve.suggested_lr:.3g} ({curve.stop})")
    return png


def check_range(lf: DictConfig) -> None:
    if lf.max_lr <= lf.min_lr:
        raise invalid("lr_find.max_lr", lf.max_lr, f"must be greater than lr_find.min_lr={lf.min_lr}")


def lr_find_task(cfg: DictConfig) -> None:
    """The Hydra task of `nettrain lr-find` (configs/lr_find.yaml: configs/train.yaml plus `lr_find`)."""
    from nettrain import rundir
    from nettrain.app import _hydra_context

    run_dir, _, overrides = _hydra_context()
    try:
        validate(cfg)
        check_range(cfg.lr_find)
        curve = range_test(cfg)
        if len(curve.lrs) < 2 or not any(map(math.isfinite, curve.smoothed)):
            raise UserError(f"the loss was not finite from the first steps ({curve.stop}); "
                            f"try a lower lr_find.min_lr={cfg.lr_find.min_lr:g}")
    except UserError as e:
        log.error("nettrain: %s", e)
        rundir.discard_new(run_dir)  # nothing was written: leave no empty run dir behind
        raise SystemExit(e.exit_code) from None
    if curve.best_index < len(curve.lrs) // 20:  # no lr lowered the loss: the range missed the useful lrs
        if curve.exploded:
            log.warning("the loss only rose: lr_find.min_lr=%g is probably already too high", cfg.lr_find.min_lr)
        else:
            log.warning("the loss did not fall up to lr_find.max_lr=%g: try a larger one", cfg.lr_find.max_lr)
    from nettrain.models import describe

    png = write_outputs(curve, run_dir, f"lr range test: model {describe(cfg.model)}, optimizer.lr sweep")
    train_overrides = [o for o in overrides if not o.startswith(("lr_find.", "optimizer.lr="))]
    log.info("%d steps, %s", len(curve.lrs), curve.stop)
    print(f"suggested lr: {curve.suggested_lr:.2e}  (a tenth of {curve.lrs[curve.best_index]:.2e}, "
          f"where the smoothed loss was lowest)")
    print(f"  train with   nettrain train {' '.join([*train_overrides, f'optimizer.lr={curve.suggested_lr:.2e}'])}")
    print(f"  curve        {png}")
    print(f"  tensorboard  tensorboard --logdir {run_dir}")
