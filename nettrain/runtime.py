"""Where and how a run computes: device, precision, threads, seeds, data-parallel rank."""

from __future__ import annotations

import logging
import os
import random
import time
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


# Below this many multiply-adds per step (parameters x batch size, for models without weight
# sharing) a step's ops are too small to split across threads: the digits MLP (50k parameters,
# batch 64) runs 1.0x-10x faster on one thread than on two, on an idle and a busy 2-core machine.
SMALL_STEP = 2e7


def choose_threads(model: torch.nn.Module, batch_size: int, world_size: int = 1) -> tuple[int, str]:
    """CPU threads for training `model` (trainer.threads=null), and why: one for small models, else
    the cores this process may use (shared among data-parallel workers). Never the load of the moment:
    the thread count changes how a CPU adds numbers up, so a run (and its resume) must compute alike
    whatever else the machine runs; the count is recorded in the run's config for a resume to reuse."""
    cores = max(available_cores() // world_size, 1)
    work = sum(p.numel() for p in model.parameters()) * batch_size
    if not getattr(model, "convolutional", False) and work < SMALL_STEP:
        return 1, f"a small model ({work / 1e6:.1f}M multiply-adds a step)"
    return cores, f"{cores} core(s)"


def busy_cores(window: float = 0.1) -> float:
    """Cores busy now, sampled from /proc/stat over `window` seconds (this process is idle while it
    waits); elsewhere, the 1-minute load average. Only for the hint that a busy machine slows a run."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total, idle = sample()
        time.sleep(window)
        total2, idle2 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    elapsed = total2 - total
    return (1 - (idle2 - idle) / elapsed) * (os.cpu_count() or 1) if elapsed > 0 else 0.0


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
    elif cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    return Runtime(device=device, amp_dtype=amp_dtype, channels_last=bool(cfg.channels_last),
                   rank=rank, world_size=world_size)


# trainer.compile's modes, as torch.compile names them; `true` is torch's default mode. `reduce-overhead` runs
# each step's kernels as a CUDA graph (small models on a GPU are bound by launching kernels, not by arithmetic).
COMPILE_MODES = {True: "default", "default": "default", "reduce-overhead": "reduce-overhead",
                 "max-autotune": "max-autotune", "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs"}


def compile_model(model: torch.nn.Module, mode: bool | str = True) -> torch.nn.Module:
    """torch.compile in `mode` (trainer.compile), or the model as it is (with the reason) where compiling is not
    possible."""
    try:
        return torch.compile(model, mode=COMPILE_MODES[mode])
    except Exception as e:  # noqa: BLE001 - any backend failure falls back to eager
        logging.getLogger("nettrain").warning("trainer.compile=%s: torch.compile is unavailable here (%s); "
                                              "training without it", mode, str(e).splitlines()[0])
        return model


def to_device(device: torch.device, values: torch.Tensor) -> torch.Tensor:
    """Host-made values (random draws, step numbers) onto `device` without a host sync: a copy from
    pageable memory makes the host wait for the GPU's queue, one from pinned memory is queued behind
    it (torch's caching host allocator makes pinning a small tensor cheap and keeps it alive until
    the copy is done)."""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)
