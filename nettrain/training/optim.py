"""Optimizer (Hydra `_target_`, any torch.optim class) and the per-step learning-rate schedule."""

from __future__ import annotations

import fnmatch
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
    features change slower than a new head); the head's group comes first, so logs show its lr.

    Weight decay skips what `no_decay` names (biases, norm scales) unless `decay_norms_and_biases`
    is true: each lr group splits into a decayed group and one with weight_decay 0, decayed first."""
    options = OmegaConf.to_container(cfg, resolve=True)
    factor = options.pop("backbone_lr_factor", None)
    decay_all = options.pop("decay_norms_and_biases", False)
    make = instantiate(options)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if factor is None:
        groups = [{"params": trainable}]
    elif not hasattr(model, "backbone"):
        raise invalid("optimizer.backbone_lr_factor", factor, "this model has no backbone/head split (your own model "
                                                              "needs `backbone` and `head` submodules); remove it")
    else:
        backbone = {id(p) for p in model.backbone.parameters()}
        groups = [{"params": [p for p in trainable if id(p) not in backbone]},
                  {"params": [p for p in trainable if id(p) in backbone], "lr": options["lr"] * factor}]
    if not decay_all and options.get("weight_decay"):  # with no decay at all, one group per lr is the same optimizer
        skip = {id(p) for p in no_decay(model)}
        groups = [part for g in groups for part in (
            {**g, "params": [p for p in g["params"] if id(p) not in skip]},
            {**g, "params": [p for p in g["params"] if id(p) in skip], "weight_decay": 0.0})]
    return make([g for g in groups if g["params"]])


def no_decay(model: nn.Module) -> list[nn.Parameter]:
    """The parameters weight decay should not shrink: those with fewer than 2 dimensions (biases,
    BatchNorm/LayerNorm scales and shifts: pulling a norm's scale to 0 only fights the norm) and the
    ones a timm model names in `no_weight_decay()` (a ViT's position embedding and class token;
    patterns, as timm reads them).
    Embedding tables are matrices like a Linear's weight and keep their decay (as nanoGPT and
    Hugging Face's Trainer do)."""
    patterns = [f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
                if callable(getattr(module, "no_weight_decay", None)) for name in module.no_weight_decay()]
    return [p for name, p in model.named_parameters()
            if p.ndim < 2 or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]


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


def is_constant(cfg: DictConfig) -> bool:
    """The schedule keeps optimizer.lr at every step (scheduler=none without warmup): nothing to step."""
    return cfg.name == "none" and not cfg.get("warmup_epochs", 0)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int,
                    max_epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step (not per epoch), so warmup and decay are smooth."""
    if cfg.name not in ("none", "cosine", "step", "onecycle"):
        raise invalid("scheduler.name", cfg.name, "allowed: none, cosine, step, onecycle")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg, steps_per_epoch * max_epochs, steps_per_epoch, optimizer.defaults["lr"]))
