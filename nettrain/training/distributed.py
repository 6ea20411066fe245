"""Data parallelism: joining the job's process group, and the few collective operations the loop
needs. With one process each operation is a no-op, so the loop reads the same with or without DDP."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nettrain.models.memory import data_buffers
from nettrain.runtime import Runtime


@contextmanager
def process_group() -> Iterator[None]:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, as
    torchrun and `nettrain.training.launch` set them) for the block: gloo carries CPU tensors, NCCL CUDA ones."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)  # before NCCL is used, so each rank owns its GPU
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast_object(obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank (the job a torchrun rank 0 composed, for the other ranks)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model`; checkpoints keep saving the unwrapped model."""
    # DDP broadcasts rank 0's buffers every step; the buffers that are data are the same on every rank.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, data_buffers(model))
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def all_reduce(tensor: torch.Tensor, rt: Runtime) -> None:
    """Sum `tensor` over ranks in place (metric totals), so every rank reports the whole data."""
    if rt.distributed:
        dist.all_reduce(tensor)


def all_gather(tensor: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Every rank's `tensor`, stacked in rank order (one row per rank)."""
    if not rt.distributed:
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(rt.world_size)]
    dist.all_gather(parts, tensor)
    return torch.stack(parts)


def all_gather_rows(tensor: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Every rank's rows of `tensor` (as many as each rank has), concatenated in rank order: a split's
    outputs whole again from the ranks' shards."""
    if not rt.distributed:
        return tensor
    sizes = all_gather(torch.tensor([len(tensor)], device=tensor.device), rt).flatten().tolist()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    return torch.cat([rows[:n] for rows, n in zip(all_gather(padded, rt), sizes)])


def all_gather_object(obj: Any, rt: Runtime) -> list[Any]:
    """Every rank's `obj` (tensors, numbers, strings, lists, dicts: what a checkpoint holds), in rank order."""
    if not rt.distributed:
        return [obj]
    # As torch.save bytes: all_gather_object's own unpickling of tensors fails on tensor storages.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    blobs: list[Any] = [None] * rt.world_size
    dist.all_gather_object(blobs, buffer.getvalue())
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]


def any_rank(flag: bool, rt: Runtime) -> bool:
    """True on every rank when `flag` is true on any (a stop request): ranks stop together."""
    if not rt.distributed:
        return flag
    t = torch.tensor([float(flag)], device=rt.device)
    dist.all_reduce(t)
    return bool(t.item())


class StopVote:
    """Whether any rank was asked to stop (a signal), agreed by every rank at the same step, checked every step
    without a rank ever waiting for another: a step's vote travels in the background on the CPU (gloo, never
    the GPU's queue) and is read one step later, when it has long arrived. One process: the answer at once."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pending: tuple[Any, torch.Tensor] | None = None

    def __call__(self, asked: bool) -> bool:
        if not self.rt.distributed:
            return asked
        agreed = self.close()
        flag = torch.tensor([float(asked)])
        self.pending = (dist.all_reduce(flag, async_op=True), flag)
        return agreed

    def close(self) -> bool:
        """The last vote's outcome (False when none is out): every rank's, before any other collective."""
        if self.pending is None:
            return False
        work, flag = self.pending
        work.wait()
        self.pending = None
        return bool(flag.item())


def broadcast_buffers(model: nn.Module, rt: Runtime) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: each rank's last training step
    updated its own, and validation and checkpoints must measure one model."""
    if rt.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()
