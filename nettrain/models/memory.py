"""A memory of the training rows for models on tables (`model.memory=true`).

Each remembered row x_j weighs in by its nearness to the input, `w_j = scale * exp(-|x - x_j|^2 / width)`
(`scale` and `width` learned): for classes, the logits gain w_j on x_j's class; for a number, the output
is the average of the network's answer (weight 1) and the rows' targets (weights w_j). A row seen in
training, or one very near it, so answers as it did there, while far rows weigh next to nothing and the
network's own answer stands for rows unlike any it trained on. Tables repeat rows (a third of the UCI
white-wine val rows copy a training row): a forest recalls them through its deep trees, whereas an MLP
must over-train to, and loses what it had learned for new rows on the way (see docs/recipes.md).

The rows are the training split as the model sees it (preprocessed), held in the model's state: every
checkpoint, and so eval, predict and export, carries them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nettrain.errors import UserError

# Values one memory may hold, rows x (inputs + a target per class, or 1 for a number): 20M float32
# values is 80 MB in every checkpoint, and a batch compares itself with every row.
MAX_VALUES = 20_000_000
# The rows that weigh in: the nearest this many (a row's weight halves every 0.035 of squared distance
# at the starting width, so the 33rd nearest rarely counts), which keeps a batch's cost to a few per row.
NEIGHBOURS = 32
# Rows a batch is scored against at once ([batch, 65,536] float32: 32 MB for a batch of 128): a memory of
# millions of rows is ranked in slices, each keeping its nearest, so no [batch, rows] matrix is ever whole.
# A count of rows, not of scores: the slices do not depend on the batch size (an export's batch is dynamic).
SLICE_ROWS = 65_536
# Rows this close (squared distance, in standardized units) are the same row.
SAME_ROW = 1e-4
# The buffers that are data, not learned: every DDP rank fills them alike, so none is broadcast.
DATA_BUFFERS = ("rows", "targets")


class Memory(nn.Module):
    """Rows and their targets, weighed into the output by their nearness to the input."""

    def __init__(self, inputs: int, classes: int, regression: bool = False) -> None:
        super().__init__()
        self.regression = regression
        self.register_buffer("rows", torch.zeros(0, inputs))
        self.register_buffer("targets", torch.zeros(0, 1 if regression else classes))  # the value, or one-hot
        # scale e, width 0.05: an exact copy's vote starts strong, and one standard deviation away on
        # a single input already counts for e^-20 of it.
        self.log_scale = nn.Parameter(torch.tensor(1.0))
        self.log_width = nn.Parameter(torch.tensor(-3.0))

    def remember(self, rows: torch.Tensor, targets: torch.Tensor) -> None:
        """Hold `rows` (inputs, one per row) and their `targets` (class indices, or numbers)."""
        rows = rows.flatten(1).float()
        width = self.targets.shape[1]
        if len(rows) * (rows.shape[1] + width) > MAX_VALUES:
            raise UserError(f"model.memory=true: {len(rows):,} training rows x ({rows.shape[1]} inputs + {width} "
                            f"target value{'s' if width > 1 else ''}) is over the {MAX_VALUES:,} values a memory holds; "
                            f"allowed for this data: model.memory=false")
        self.rows = rows.to(self.rows.device)
        targets = targets.float().view(-1, 1) if self.regression else F.one_hot(targets.long(), width)
        self.targets = targets.float().to(self.targets.device)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The network's output `out` for the inputs `x`, with the nearest remembered rows weighed in."""
        with torch.autocast(x.device.type, enabled=False):  # bf16 distances would blur copies into neighbours
            x = x.flatten(1).float()
            with torch.no_grad():
                nearest = self._nearest(x)
                # Their distances from the differences: exact (a copy is at 0) even where matmuls run in
                # TF32 on a GPU, whose rounding would put a copy at ~0.01 and let a row vote for itself.
                d2 = (x.unsqueeze(1) - self.rows[nearest]).square().sum(-1)
            near = self.log_scale.exp() * torch.exp(-d2 / self.log_width.exp())
            if self.training:
                # A training row is in the memory itself: leave it out, or the network learns to copy the
                # answer it is given. Its copies (the same row, with the same target) share that one leave.
                same = (d2 <= SAME_ROW).float()
                near = near - same * near / same.sum(1, keepdim=True).clamp_min(1)
            votes = (near.unsqueeze(-1) * self.targets[nearest]).sum(1)
            if self.regression:
                return (out.float() + votes) / (1 + near.sum(1, keepdim=True))
            return out.float() + votes

    def _nearest(self, x: torch.Tensor) -> torch.Tensor:
        """The indices of the rows nearest each input, [batch, NEIGHBOURS]: the nearest of each slice of
        rows, then the nearest of those."""
        if not len(self.rows):  # nothing remembered yet
            return torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
        k = min(NEIGHBOURS, len(self.rows))
        score, index = self._nearest_in_slice(x, 0, k)
        for start in range(SLICE_ROWS, len(self.rows), SLICE_ROWS):
            more, more_index = self._nearest_in_slice(x, start, k)
            score, pick = torch.cat([score, more], 1).topk(k, dim=1, largest=False)
            index = torch.cat([index, more_index], 1).gather(1, pick)
        return index

    def _nearest_in_slice(self, x: torch.Tensor, start: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # |r|^2 - 2 x.r ranks the rows as the squared distance does, in one matmul.
        rows = self.rows[start:start + SLICE_ROWS]
        score, index = torch.addmm(rows.square().sum(1), x, rows.T, alpha=-2).topk(
            min(k, len(rows)), dim=1, largest=False)
        return score, index + start

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint's memory has its own number of rows: take it, then the values. Rows of another width,
        # or targets of another count, are left for the load to refuse as a size mismatch.
        rows = state_dict.get(prefix + "rows")
        count = rows.shape[0] if isinstance(rows, torch.Tensor) and rows.dim() == 2 else None
        for name in DATA_BUFFERS:
            saved, own = state_dict.get(prefix + name), getattr(self, name)
            if isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape[1] == own.shape[1] \
                    and saved.shape[0] == count:
                setattr(self, name, torch.empty(saved.shape, device=own.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def memory_of(model: nn.Module) -> Memory | None:
    """The model's memory of rows, if it has one (a user's own model may call something else `memory`)."""
    memory = getattr(model, "memory", None)
    return memory if isinstance(memory, Memory) else None


# What the rest of nettrain asks of a model's memory, one function each: nothing else reaches into it.

def remember_training_rows(model: nn.Module, rows: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Fill the model's memory (if it has one) with the training split's rows and targets."""
    memory = memory_of(model)
    if memory is None:
        return
    if rows is None:
        raise UserError("invalid model.memory=True: it remembers the rows of a table (data=csv), and this data has "
                        "none; allowed: false")
    memory.remember(*rows)


def remembered_rows(model: nn.Module) -> int | None:
    """How many rows the model remembers (None: it has no memory), for the start-up summary."""
    memory = memory_of(model)
    return len(memory.rows) if memory is not None else None


def data_buffers(model: nn.Module) -> list[str]:
    """The names of the model's buffers that are data, not learned: every data-parallel rank fills them
    alike, so none is broadcast (a memory's rows are up to 80 MB)."""
    return [f"{name}.{buffer}" for name, module in model.named_modules() if isinstance(module, Memory)
            for buffer in DATA_BUFFERS]


def with_own_memory(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """A checkpoint's weights `state` for fine-tuning `model`, with the model's own memory in place of the
    source's, and what became of it (for the log). A memory's rows are the source's data, not something it
    learned: this run remembers its own; the learned scale and width carry over when both have a memory, and
    the network transfers whether either has one."""
    had, mine = "memory.rows" in state, memory_of(model)
    if not had and mine is None:
        return state, ""
    network = {k: v for k, v in state.items() if not k.startswith("memory.")}
    if mine is None:
        return network, "; its memory of rows is left (model.memory=false)"
    kept = {k: state[k] for k in ("memory.log_scale", "memory.log_width") if k in state}
    memory = {f"memory.{k}": v for k, v in mine.state_dict().items()} | kept
    return network | memory, "" if had else "; the memory (model.memory=true) starts afresh"
