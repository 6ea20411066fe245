"""Where and how a run computes: device, precision, threads, seeds, data-parallel rank."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from nettrain.errors import invalid


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None       # None = full fp32
    channels_last: bool                 # for convolutional models
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 prints, logs to TensorBoard and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise invalid("trainer.device", name, "no CUDA GPU is available here; use trainer.device=cpu or auto")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise invalid("trainer.device", name, f"this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(name)


def resolve_precision(precision: Any, device: torch.device) -> torch.dtype | None:
    """`auto`: bf16 on CUDA GPUs that support it, else fp32. fp16 needs CUDA (with a grad scaler)."""
    precision = str(precision)
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "32":
        return None
    if precision == "16":
        if device.type != "cuda":
            raise invalid("trainer.precision", 16, f"fp16 needs a CUDA GPU, the device is {device.type}; use 32 or bf16")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise invalid("trainer.precision", "bf16", "this GPU has no bf16 support; use 16 or 32")
    return torch.bfloat16


def cuda_device(device: torch.device, local_rank: int | None) -> torch.device:
    """A CUDA device with its index: torch.cuda.set_device (and per-device state) refuse a bare `cuda`.
    A data-parallel worker takes the GPU of its local rank; otherwise `cuda` is the current GPU."""
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def configure_cuda() -> None:
    """Kernel choices shared by training and every later command (eval reproduces validation exactly)."""
    torch.backends.cudnn.benchmark = True  # autotune conv algorithms for the fixed input size
    torch.set_float32_matmul_precision("high")  # TF32 matmuls (cuDNN convolutions use TF32 by default)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(cfg: DictConfig) -> Runtime:
    """Device, precision and threads for `cfg.trainer`; seeds every generator."""
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device.type == "cuda":
        device = cuda_device(device, int(os.environ.get("LOCAL_RANK", 0)) if world_size > 1 else None)
        torch.cuda.set_device(device)
        configure_cuda()
    else:
        threads = cfg.threads or max(available_cores() // world_size, 1)
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    return Runtime(device=device, amp_dtype=amp_dtype, channels_last=bool(cfg.channels_last),
                   rank=rank, world_size=world_size)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile, or the model as it is (with the reason) where compiling is not possible."""
    import logging

    try:
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001 - any backend failure falls back to eager
        logging.getLogger("nettrain").warning("trainer.compile=true: torch.compile is unavailable here (%s); "
                                              "training without it", str(e).splitlines()[0])
        return model
