"""The learning-rate range test (L. Smith, 2015).

The model trains one batch per step while the lr grows exponentially from `lr_find.min_lr` to
`lr_find.max_lr`; the test stops once the smoothed loss explodes. The suggested lr is a tenth of
the lr where the smoothed loss was lowest: past that point the steps are too large to keep
lowering the loss, and a tenth of it leaves a margin for a whole run. The model, data, loss and
optimizer come from the same builders as training's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from nettrain import runtime
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.models.build import before_data, build_trainable
from nettrain.models.losses import build_loss
from nettrain.records.console import step_bar
from nettrain.training.optim import build_optimizer

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
