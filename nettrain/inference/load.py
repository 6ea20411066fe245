"""A checkpoint turned back into a ready model: built from the config and spec the checkpoint carries, its
weights loaded, on the device asked for, in eval mode (with test-time augmentation as validation measured)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nettrain.config.paths import absolute
from nettrain.config.registry import describe
from nettrain.config.user_code import confirm
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid, one_of
from nettrain.inference.exported import OnnxModule, decision_state, is_exported, read_info
from nettrain.models.build import build_model
from nettrain.models.tta import with_tta
from nettrain.records.checkpoint import load_checkpoint, load_weights
from nettrain.runtime import configure_cuda, cuda_device, resolve_device


def run_dir_of(checkpoint: Path) -> Path:
    """The run dir holding `checkpoint`: RUN/checkpoints/best.pt -> RUN, and an exported file still in its run's
    export/ folder (RUN/export/best.int8.onnx) -> RUN too, so what is served from it (feedback) lands where
    `nettrain update RUN` reads it; a file anywhere else -> its folder."""
    folder = checkpoint.parent
    if folder.name == "checkpoints" or (folder.name == "export" and (folder.parent / "checkpoints").is_dir()):
        return folder.parent
    return folder


@dataclass
class Loaded:
    """A checkpoint made ready for inference."""

    model: torch.nn.Module     # built from the checkpoint's config and spec, weights loaded, eval mode
                               # (under trainer.tta=flip: a FlipAverage of it)
    spec: DataSpec
    config: DictConfig         # the training run's resolved config
    path: Path                 # the checkpoint file
    device: torch.device
    decision: dict[str, Any] | None = None  # binary classification: the positive class and threshold (nettrain.inference.decision)

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.path)


# How eval, predict and export name a `_target_` they may import (see nettrain.config.user_code.confirm).
CONFIRM_HOW = "add {key}={target} to this command"


def load_model(ckpt: str | Path, device: str = "cpu", confirmed: dict[str, Any] | None = None) -> Loaded:
    """Build the checkpoint's model on `device` (`auto`, `cpu`, `cuda[:N]`) in eval mode.
    A run dir means its checkpoints/best.pt; an exported .onnx file (with its .json) is run by onnxruntime.
    A model `_target_` the checkpoint names is imported only when `confirmed` (the command's own `model.`
    arguments) names the same one."""
    one_of("device", str(device).split(":")[0], ("auto", "cpu", "cuda"))
    if is_exported(ckpt):
        return load_exported(Path(absolute(str(ckpt))), str(device))
    target = resolve_device(str(device))
    if target.type == "cuda":
        target = cuda_device(target, None)
        configure_cuda()  # the kernels training validated with
    state = load_checkpoint(absolute(str(ckpt)))
    confirm(state["config"], confirmed, ("model",), state["path"], CONFIRM_HOW)
    spec = DataSpec.from_dict(state["spec"])
    config = OmegaConf.create(state["config"])
    try:
        model = build_model(config.model, spec)
    except UserError as e:
        raise UserError(f"cannot rebuild the model of {state['path']}: {e}") from None
    load_weights(model, state["model"], state["path"], describe(config.model))
    # The memory format validation ran in: convolution kernels differ by format, and eval must
    # reproduce the recorded val metrics exactly.
    channels_last = bool(OmegaConf.select(config, "trainer.channels_last", default=False)) and getattr(model, "convolutional", False)
    model = model.to(target, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    # Test-time augmentation as validation measured it (trainer.tta=flip: the image and its mirror).
    model = with_tta(model, OmegaConf.select(config, "trainer.tta", default=None), spec)
    return Loaded(model=model.eval(), spec=spec, config=config, path=Path(state["path"]), device=target,
                  decision=state.get("decision"))


def load_exported(path: Path, device: str = "cpu", threads: int | None = None) -> Loaded:
    """An exported .onnx file as a `Loaded`: its model runs in onnxruntime on the CPU (`threads`: None for all
    cores), its spec, config and decision come from the .json beside it. The model's code is never needed."""
    if str(device).startswith("cuda"):
        raise invalid("device", device, "an exported .onnx file runs on the CPU (onnxruntime's CPU provider); "
                                        "allowed: auto, cpu")
    if not path.is_file():
        raise UserError(f"no such exported model: {path}")
    info = read_info(path)
    model = OnnxModule(path, threads, info["input_name"], info["output_name"])
    return Loaded(model=model.eval(), spec=DataSpec.from_dict(info["spec"]), config=OmegaConf.create(info["config"]),
                  path=path, device=torch.device("cpu"), decision=decision_state(info))
