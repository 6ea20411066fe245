"""Batches for the training loop, by one rule: the same seed and epoch give the same batches.

`batch_plan` decides which samples form each batch (shuffled per epoch by a generator seeded with
the run's seed and the epoch number, sharded across data-parallel ranks). Two loaders follow it:
`TensorLoader` slices whole in-memory tensors (no per-sample work at all), `StreamLoader` feeds the
same plan to a torch DataLoader for data that is decoded on the fly; `BlockLoader` serves a language
model's blocks of one long sequence of token ids. Because the plan depends only
on (seed, epoch), a resumed run replays the exact data order, and `start` skips the batches an
interrupted epoch already used.
"""

from __future__ import annotations

import atexit
import itertools
import signal
import time
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

# (x, epoch, batch index) -> x: a per-batch transform applied on the loader's device,
# e.g. normalization and augmentation of uint8 images already resident on the GPU.
BatchTransform = Callable[[Tensor, int, int], Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator an epoch's order is drawn from: a function of the run's seed and the epoch alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def batch_plan(n: int, batch_size: int, *, epoch: int, seed: int, shuffle: bool, drop_last: bool,
               rank: int = 0, world_size: int = 1) -> list[Tensor]:
    """Index tensors of this rank's batches for one epoch.

    With several ranks each takes every world_size-th sample of the epoch's order, so the ranks'
    batch k together are exactly the single-process batch k of size batch_size x world_size.
    Training drops a last partial batch (when there is at least one full one), which keeps every
    rank at the same number of steps; evaluation keeps all samples, each on exactly one rank.
    """
    if shuffle:
        order = torch.randperm(n, generator=epoch_generator(seed, epoch))
    else:
        order = torch.arange(n)
    global_batch = batch_size * world_size
    if drop_last and n >= global_batch:
        order = order[: n - n % global_batch]
    mine = order[rank::world_size]
    return list(mine.split(batch_size))


class _Planned:
    """What both loaders share: n samples batched by `batch_plan` for this rank."""

    def __init__(self, n: int, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 transform: BatchTransform | None, rank: int, world_size: int) -> None:
        self.num_samples = n
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.transform = transform
        self.rank, self.world_size = rank, world_size

    def plan(self, epoch: int) -> list[Tensor]:
        return batch_plan(self.num_samples, self.batch_size, epoch=epoch, seed=self.seed, shuffle=self.shuffle,
                          drop_last=self.drop_last, rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        return len(self.plan(0))

    def close(self) -> None:
        """Release what serving batches holds (worker processes); in-memory data holds nothing."""


class TensorLoader(_Planned):
    """In-memory data served by slicing: one permutation per epoch, no __getitem__, no collate."""

    def __init__(self, x: Tensor, y: Tensor, *, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool, transform: BatchTransform | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(y), batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         transform=transform, rank=rank, world_size=world_size)
        self.x, self.y = x, y
        self.device = x.device

    def to(self, device: torch.device) -> TensorLoader:
        """Keep the data resident on `device` (the GPU): batches then never cross the bus."""
        self.x, self.y, self.device = self.x.to(device), self.y.to(device), torch.device(device)
        return self

    def batches(self, epoch: int, start: int = 0, device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """This epoch's batches from batch `start` on, moved to `device` (a no-op when resident)."""
        plan = self.plan(epoch)[start:]
        if not plan:
            return
        # The epoch's indices cross to the data's device in one copy, not one per batch.
        indices = torch.cat(plan).to(self.device, non_blocking=True).split([len(idx) for idx in plan])
        for i, (host_idx, idx) in enumerate(zip(plan, indices), start):
            x, y = self.rows(host_idx, idx), self.y.index_select(0, idx)
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if self.transform is not None:
                x = self.transform(x, epoch, i)
            yield x, y

    def rows(self, host_idx: Tensor, idx: Tensor) -> Tensor:
        """The inputs of one batch (`idx` on the data's device, `host_idx` the same on the CPU)."""
        return self.x.index_select(0, idx)


class _PlanSampler:
    """A batch sampler that yields `batch_plan` for the epoch set by the loader."""

    def __init__(self, loader: StreamLoader) -> None:
        # A weak reference: the loader owns the DataLoader that owns this sampler, and a cycle would
        # keep the DataLoader's worker processes alive after the loader is dropped, until a gc pass.
        self.loader = weakref.proxy(loader)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.loader.plan(self.loader.epoch)[self.loader.start:]:
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.loader.plan(self.loader.epoch)) - self.loader.start


def _leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A Ctrl-C or a scheduler's SIGTERM reaches every process (the terminal signals the process
    group; SLURM and systemd signal each process). A worker that died of it would fail the step the
    main process is finishing before it saves: workers ignore both, and the main process stops them
    itself (`StreamLoader.close`), gracefully, once it has saved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_open: weakref.WeakSet[StreamLoader] = weakref.WeakSet()


@atexit.register
def _close_open_loaders() -> None:
    """Workers ignore SIGTERM, so the interpreter's exit (which would terminate and then join them)
    must stop them gracefully first, whatever way the process ends (a crash's traceback keeps loaders
    alive). Registered after torch's own exit hook, so it runs before it, while shutdown still works."""
    for loader in list(_open):
        loader.close()


# (epoch, seconds its consumer waited for batches, seconds it took): a StreamLoader's report on the
# first epoch it serves, e.g. a hint that decoding bounds the training.
EpochReport = Callable[[int, float, float], None]


class StreamLoader(_Planned):
    """A Dataset decoded on the fly by DataLoader workers, batched by the same plan as TensorLoader.
    It times how long its consumer waits for each batch; `on_first_epoch` gets that epoch's total."""

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 num_workers: int = 0, pin_memory: bool = False, transform: BatchTransform | None = None,
                 rank: int = 0, world_size: int = 1, on_first_epoch: EpochReport | None = None) -> None:
        super().__init__(len(dataset), batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         transform=transform, rank=rank, world_size=world_size)
        self.dataset = dataset
        self.epoch, self.start = 0, 0
        self.on_first_epoch = on_first_epoch
        self.loader = DataLoader(dataset, batch_sampler=_PlanSampler(self), num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed), worker_init_fn=_leave_stop_signals_to_the_main_process)
        _open.add(self)

    def close(self) -> None:
        """Stop the worker processes now (they exit once they see the end-of-work marker)."""
        iterator = self.loader._iterator  # persistent workers live in the DataLoader's reused iterator
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None

    def batches(self, epoch: int, start: int = 0, device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        self.epoch, self.start = epoch, start
        began = time.perf_counter()
        batches = iter(self.loader)  # the first epoch's starts the workers: waiting too
        waited = time.perf_counter() - began  # and in next(): the batch was not decoded yet
        try:
            for i in itertools.count(start):
                asked = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - asked
                if batch is None:
                    return
                x, y = batch
                if device is not None:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if self.transform is not None:
                    x = self.transform(x, epoch, i)
                yield x, y
        finally:  # the epoch's end, or its consumer stopping early (a batch limit, an interrupt)
            report, self.on_first_epoch = self.on_first_epoch, None
            if report is not None:
                report(epoch, waited, time.perf_counter() - began)


class BlockLoader(_Planned):
    """One long sequence of token ids served as blocks: x = ids[s : s+T] and its next tokens y = ids[s+1 : s+T+1]
    (a language model's inputs and targets) for block starts s, T = `block_size`.

    Training (`per_epoch` given) draws that many batches of random starts an epoch, with replacement (a
    permutation of every start of a long text would be larger than its ids), from `epoch_generator`, as
    `batch_plan` draws its shuffle: a resumed run replays them exactly. With several ranks each takes every
    world_size-th start of the global batch, so the ranks' batch k together is the single process's batch k
    of batch_size x world_size. Evaluation (`per_epoch` None) takes the consecutive non-overlapping blocks in
    order (each token predicted once; a last partial block is left out), batched by `batch_plan`.
    """

    def __init__(self, ids: Tensor, block_size: int, *, batch_size: int, seed: int, per_epoch: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        starts = len(ids) - block_size if per_epoch is not None else (len(ids) - 1) // block_size
        super().__init__(starts, batch_size=batch_size, shuffle=per_epoch is not None, seed=seed, drop_last=False,
                         transform=None, rank=rank, world_size=world_size)
        self.ids, self.block_size, self.per_epoch = ids, block_size, per_epoch
        self.device = ids.device
        self.offsets = torch.arange(block_size + 1, device=ids.device)

    def to(self, device: torch.device) -> BlockLoader:
        """Keep the ids resident on `device` (the GPU): a batch is then one gather there."""
        self.ids, self.offsets, self.device = self.ids.to(device), self.offsets.to(device), torch.device(device)
        return self

    def plan(self, epoch: int) -> list[Tensor]:
        """The block starts of this rank's batches."""
        if self.per_epoch is None:
            return [idx * self.block_size for idx in super().plan(epoch)]
        starts = torch.randint(self.num_samples, (self.per_epoch, self.batch_size * self.world_size),
                               generator=epoch_generator(self.seed, epoch))
        return list(starts[:, self.rank::self.world_size])

    def __len__(self) -> int:
        return self.per_epoch if self.per_epoch is not None else super().__len__()

    def batches(self, epoch: int, start: int = 0, device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """This epoch's (inputs, targets) from batch `start` on, moved to `device` (a no-op when resident)."""
        plan = self.plan(epoch)[start:]
        if not plan:
            return
        # The epoch's starts cross to the ids' device in one copy, not one per batch.
        for starts in torch.cat(plan).to(self.device, non_blocking=True).split([len(s) for s in plan]):
            blocks = self.ids[starts.unsqueeze(1) + self.offsets].long()  # [batch, T + 1]: one gather
            x, y = blocks[:, :-1], blocks[:, 1:]
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield x, y


Loader = TensorLoader | StreamLoader | BlockLoader  # a TextLoader is a TensorLoader


class TextLoader(TensorLoader):
    """Token ids [N, longest text] padded at the end, served like TensorLoader, with each batch cut
    to its own longest text: a batch of short questions costs the model short sequences."""

    def __init__(self, ids: Tensor, lengths: Tensor, y: Tensor, **kwargs: object) -> None:
        super().__init__(ids, y, **kwargs)
        self.lengths = lengths  # stays on the CPU: a batch's width is known without waiting for the device

    def rows(self, host_idx: Tensor, idx: Tensor) -> Tensor:
        width = int(self.lengths.index_select(0, host_idx).max())
        return self.x[:, :width].index_select(0, idx)
