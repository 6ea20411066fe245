"""Optimizer (Hydra `_target_`, any torch.optim class) and the per-step learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nettrain.errors import invalid


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """`cfg` is the optimizer group: a partial torch.optim class. Frozen parameters are left out.
    An optional `backbone_lr_factor` gives the backbone lr x factor (fine-tuning: pretrained
    features change slower than a new head); the head's group comes first, so logs show its lr."""
    options = OmegaConf.to_container(cfg, resolve=True)
    factor = options.pop("backbone_lr_factor", None)
    make = instantiate(options)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if factor is None:
        return make(trainable)
    if not hasattr(model, "backbone"):
        raise invalid("optimizer.backbone_lr_factor", factor, "this model has no backbone/head split (your own model "
                                                              "needs `backbone` and `head` submodules); remove it")
    backbone = {id(p) for p in model.backbone.parameters()}
    groups = [{"params": [p for p in trainable if id(p) not in backbone]},
              {"params": [p for p in trainable if id(p) in backbone], "lr": options["lr"] * factor}]
    return make([g for g in groups if g["params"]])


def lr_factor(cfg: DictConfig, total_steps: int, steps_per_epoch: int, base_lr: float) -> Callable[[int], float]:
    """The schedule as a pure function of the optimizer step: lr = optimizer.lr x factor(step).

    A pure function (under LambdaLR) makes the schedule exactly resumable from the step count
    alone, and lets a resumed run with more epochs stretch it.
    """
    warmup = round(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    total = max(total_steps, 1)
    cfg = SimpleNamespace(**OmegaConf.to_container(cfg))  # plain values: a DictConfig lookup at every step costs ~10 us

    def schedule(step: int) -> float:
        if cfg.name == "cosine":
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            floor = min(cfg.min_lr / base_lr, 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.name == "step":
            return cfg.gamma ** ((step - warmup) // (cfg.step_epochs * steps_per_epoch))
        if cfg.name == "onecycle":
            peak = round(cfg.pct_start * total)
            if step < peak:  # cosine rise from peak/25 to peak, then cosine fall to peak/1e4
                t = step / max(peak, 1)
                return cfg.max_lr_factor * (1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * t)))
            t = min((step - peak) / max(total - peak, 1), 1.0)
            return cfg.max_lr_factor * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t)))
        return 1.0

    def factor(step: int) -> float:
        if step < warmup:
            return schedule(warmup) * (0.01 + 0.99 * step / warmup)
        return schedule(step)

    return factor


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int,
                    max_epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step (not per epoch), so warmup and decay are smooth."""
    if cfg.name not in ("none", "cosine", "step", "onecycle"):
        raise invalid("scheduler.name", cfg.name, "allowed: none, cosine, step, onecycle")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg, steps_per_epoch * max_epochs, steps_per_epoch, optimizer.defaults["lr"]))
