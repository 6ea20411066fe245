"""What a run is about to do, before its first step: device, precision, data, model, schedule.

`startup` gathers the facts (plain types: they also go into metrics.json under `run`);
`startup_lines` and `layers_table` show them in a few lines and one small table that fit 80 columns.
"""

from __future__ import annotations

import platform
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn

from nettrain.config.registry import describe
from nettrain.models.memory import remembered_rows
from nettrain.runtime import Runtime

if TYPE_CHECKING:
    from nettrain.data.base import Data

PRECISIONS = {None: "32", torch.bfloat16: "bf16", torch.float16: "16"}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model (from /proc/cpuinfo on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _shape(output: Any) -> list[int] | None:
    if isinstance(output, torch.Tensor):
        return list(output.shape[1:])
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return list(output[0].shape[1:])  # e.g. a model with auxiliary outputs: the main one
    return None


def _rows(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers a summary lists: the model's top-level modules, one level deeper into those that
    are containers (a Net's backbone and head)."""
    rows = []
    for name, child in model.named_children():
        grandchildren = list(child.named_children())
        if grandchildren:
            rows += [(f"{name}.{sub}", module) for sub, module in grandchildren]
        else:
            rows.append((name, child))
    return rows


@torch.no_grad()
def model_summary(model: nn.Module, input_shape: list[int], device: torch.device,
                  channels_last: bool = False, tokens: bool = False) -> dict[str, Any]:
    """Parameters (total, trainable), input shape, output size and each listed layer's output shape
    (the feature map sizes of a convnet) and parameters, from one forward pass of a zero batch of one
    in eval mode (zeros and eval mode: it draws no random numbers and changes no statistics). A text
    model (`tokens`) gets token ids: ones, a token that is not padding."""
    rows = _rows(model)
    shapes: dict[str, list[int] | None] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, _shape(o)))
             for name, module in rows]
    was_training = model.training
    # A text model reads a few tokens (any length up to its longest works; a pretrained encoder's may be short).
    x = (torch.ones(1, min(8, *input_shape), dtype=torch.long, device=device) if tokens
         else torch.zeros(1, *input_shape, device=device))
    try:
        model.eval()
        output = model(x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    layers, previous = [], list(input_shape)
    for name, module in rows:
        params = sum(p.numel() for p in module.parameters())
        shape = shapes.get(name)
        if params or (shape is not None and shape != previous):  # activations, dropout: nothing to show
            layers.append({"name": name, "type": type(module).__name__, "output_shape": shape, "parameters": params})
        previous = shape if shape is not None else previous
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "input_shape": list(input_shape), "outputs": (_shape(output) or [0])[-1], "layers": layers,
            "remembered_rows": remembered_rows(model)}


TOKEN_KINDS = ("text", "text_lm")  # data whose inputs are token ids


def _amounts(data: Data) -> dict[str, Any]:
    """How much data each split holds: its samples, or a language model's tokens and vocabulary."""
    splits = [(split, loader) for split, loader in (("train", data.train), ("val", data.val), ("test", data.test))
              if loader is not None]
    if data.spec.task == "lm":
        vocabulary = "characters" if data.spec.char_level else "tokens"
        return {"tokens": {split: len(getattr(loader, "ids", ())) for split, loader in splits},
                "vocabulary": f"{data.spec.num_classes:,} {vocabulary}"}
    return {"samples": {split: loader.num_samples for split, loader in splits}}


def startup(cfg: DictConfig, rt: Runtime, data: Data, model: nn.Module, steps_per_epoch: int, epochs: int,
            channels_last: bool) -> dict[str, Any]:
    """The facts of a run about to start, as plain types."""
    spec = data.spec
    optimizer = str(cfg.optimizer.get("_target_", "?")).rsplit(".", 1)[-1].lower()
    return {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(rt.device), "device_name": device_name(rt.device),
        "precision": PRECISIONS.get(rt.amp_dtype, str(rt.amp_dtype)),
        "threads": torch.get_num_threads(), "processes": rt.world_size,
        "data": {"name": cfg.data.get("name") or cfg.data.get("_target_"), "task": spec.task, "classes": len(spec.class_names) or None,
                 "input_shape": list(spec.input_shape), **_amounts(data)},
        "model": {"name": describe(cfg.model), **model_summary(model, spec.input_shape, rt.device, channels_last,
                                                                tokens=spec.preprocessing.get("kind") in TOKEN_KINDS)},
        "optimizer": {"name": optimizer, "lr": cfg.optimizer.lr, "weight_decay": cfg.optimizer.get("weight_decay")},
        "scheduler": cfg.scheduler.get("name", "none"),
        "batch_size": cfg.data.batch_size * rt.world_size,
        "epochs": epochs, "steps_per_epoch": steps_per_epoch, "steps": steps_per_epoch * epochs,
    }
