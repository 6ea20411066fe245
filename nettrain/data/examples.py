"""Labelled examples as the loaders hold them, to be mixed and served again: what `nettrain update` replays of a
run's data and learns from its new examples.

`Examples` are model inputs before a loader's batch transform (uint8 images, token ids with their lengths, encoded
rows) with their targets (class indices, or numbers). `gather` takes them out of any split's loader (a sample, or
all), `encode_raw` makes them from raw inputs as a client sent them (a base64 image, a text, a row {column:
value}) with a trained model's preprocessing, `loader_of` serves them as a split again. Their targets come from
`targets_of`: class names mapped to a trained model's indices, a label it has never seen appended after them.
A language model's examples are a text's `Tokens` (its blocks and their next tokens), served as its loaders serve
a text: random blocks for training, consecutive ones for evaluation.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tokenizers import Tokenizer
from torch import Tensor

from nettrain.data.base import DataContext, tensor_loader
from nettrain.data.loaders import BatchTransform, BlockLoader, Loader, StreamLoader, TensorLoader, TextLoader, epoch_generator
from nettrain.data.tabular import encode_rows
from nettrain.data.text import class_order, encode, text_loader
from nettrain.data.transforms import decode
from nettrain.errors import UserError

DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)  # a browser's `data:image/png;base64,...`


@dataclass
class Examples:
    """Model inputs as a loader holds them (before its batch transform) and their targets."""

    x: Tensor                       # uint8 images [N, C, S, S], token ids [N, longest], encoded rows [N, F]
    y: Tensor                       # class indices (int64), or numbers (float32)
    lengths: Tensor | None = None   # text: each row's tokens (its ids past them are padding)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices: Tensor | list[int]) -> Examples:
        index = torch.as_tensor(indices, dtype=torch.long)
        return Examples(self.x.index_select(0, index), self.y.index_select(0, index),
                        self.lengths.index_select(0, index) if self.lengths is not None else None)

    def state(self) -> dict[str, Tensor | None]:
        """Plain tensors, for a file that loads with `weights_only=True`."""
        return {"x": self.x, "y": self.y, "lengths": self.lengths}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Examples:
        return cls(state["x"], state["y"], state.get("lengths"))


@dataclass
class Tokens:
    """A text as a language model's loaders hold it: its token ids, read in blocks of `block_size` and their next
    tokens. Its examples are its blocks (one per `block_size` tokens; training draws them from every start)."""

    ids: Tensor
    block_size: int

    def __len__(self) -> int:
        return max(0, (len(self.ids) - 1) // self.block_size)

    def state(self) -> dict[str, Any]:
        return {"ids": self.ids, "block_size": self.block_size}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokens:
        ids = state["ids"]
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError("its token ids are not a 1-D tensor of integers")
        return cls(ids, int(state["block_size"]))


def from_state(state: dict[str, Any]) -> Examples | Tokens:
    """Examples or a text's tokens, as `state()` kept them."""
    return Tokens.from_state(state) if "ids" in state else Examples.from_state(state)


def join(parts: Sequence[Any], pad_id: int = 0) -> Any:
    """One set of the given ones (None where there are none); token ids are padded to the widest with `pad_id`;
    texts follow one another (a block across the seam reads the end of one and the start of the next)."""
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return None
    if isinstance(parts[0], Tokens):
        return Tokens(torch.cat([p.ids for p in parts]), parts[0].block_size)
    if parts[0].lengths is None:
        return Examples(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    width = max(p.x.shape[1] for p in parts)
    x = torch.cat([F.pad(p.x, (0, width - p.x.shape[1]), value=pad_id) for p in parts])
    return Examples(x, torch.cat([p.y for p in parts]), torch.cat([p.lengths for p in parts]))


def gather(loader: Loader, indices: Tensor | None = None) -> Any:
    """The examples a split's loader serves (those at `indices`, else all), as it holds them, on the CPU; a text's
    loader gives its whole text (its blocks are drawn from every start of it)."""
    if isinstance(loader, BlockLoader):
        return Tokens(loader.ids.cpu(), loader.block_size)
    if isinstance(loader, TensorLoader):
        index = torch.arange(loader.num_samples) if indices is None else indices
        on_device = index.to(loader.device)
        lengths = loader.lengths.index_select(0, index) if isinstance(loader, TextLoader) else None
        return Examples(loader.x.index_select(0, on_device).cpu(), loader.y.index_select(0, on_device).cpu(), lengths)
    if isinstance(loader, StreamLoader):  # decoded one by one, as its workers would
        items = [loader.dataset[i] for i in (range(loader.num_samples) if indices is None else indices.tolist())]
        return Examples(torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items]))
    raise UserError(f"cannot read the examples of a {type(loader).__name__}")


def loader_of(examples: Examples | Tokens, cfg: DictConfig, ctx: DataContext, *, train: bool,
              transform: BatchTransform | None = None) -> Loader:
    """`examples` served as a split (the data config `cfg` gives the batch size): shuffled full batches for
    training, in order for evaluation, through the batch `transform` of the loader they came from (a text, for
    evaluation: its consecutive blocks)."""
    if isinstance(examples, Tokens):
        if train:
            raise ValueError("a text trains through replay_loader, which draws its blocks")
        loader = BlockLoader(examples.ids, examples.block_size, batch_size=ctx.eval_batch_size or cfg.batch_size,
                             seed=ctx.seed)
        return loader.to(ctx.device) if ctx.resident else loader
    if examples.lengths is not None:
        return text_loader(examples.x, examples.lengths, examples.y, cfg, ctx, train=train)
    return tensor_loader(examples.x, examples.y, cfg, ctx, train=train, transform=transform)


class _Replaying:
    """A training split that holds new examples and a pool of old ones (`x` and `y`: the new first): each epoch
    serves every new example `repeats` times and `replayed` of the old ones, drawn afresh (seeded by the seed and
    the epoch, as `batch_plan` shuffles: a resumed run serves the same), all shuffled together. Over the epochs the
    old examples served are many more than one epoch's, which keeps the old classes' boundaries where they were."""

    def replaying(self, new: int, repeats: int, replayed: int) -> None:
        self.new, self.repeats = new, repeats
        self.old = self.num_samples - new
        self.replayed = replayed if self.old else 0
        self.num_samples = new * repeats + self.replayed  # an epoch's samples

    def plan(self, epoch: int) -> list[Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        rounds = math.ceil(self.replayed / self.old) if self.old else 0  # a small pool: each old example as evenly
        old = self.new + torch.cat([torch.randperm(self.old, generator=generator) for _ in range(rounds)]
                                   or [torch.zeros(0, dtype=torch.long)])[:self.replayed]
        chosen = torch.cat([torch.arange(self.new).repeat(self.repeats), old])
        order = chosen[torch.randperm(len(chosen), generator=generator)]
        global_batch = self.batch_size * self.world_size
        if len(order) >= global_batch:  # full batches only, the same number on every rank
            order = order[: len(order) - len(order) % global_batch]
        return list(order[self.rank::self.world_size].split(self.batch_size))


class ReplayLoader(_Replaying, TensorLoader):
    """New and replayed examples of in-memory tensors (images, rows)."""


class ReplayTextLoader(_Replaying, TextLoader):
    """New and replayed token ids, each batch cut to its longest text."""


class ReplayBlockLoader(BlockLoader):
    """A new text and an old one (the ids: the new first), served as random blocks: each epoch draws its blocks'
    starts from the new text and from the old in the shares `new` : `replayed` (seeded by the seed and the epoch,
    as a text's training blocks are: a resumed run serves the same), shuffled together; `per_epoch` batches (None:
    `new` + `replayed` blocks)."""

    def __init__(self, new: Tokens, pool: Tokens | None, new_blocks: int, replayed: int, per_epoch: int | None, *,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        ids = torch.cat([new.ids, pool.ids]) if pool is not None else new.ids
        replayed = replayed if pool is not None else 0
        global_batch = batch_size * world_size
        per_epoch = per_epoch or max(1, (new_blocks + replayed) // global_batch)
        super().__init__(ids, new.block_size, batch_size=batch_size, seed=seed, per_epoch=per_epoch, rank=rank,
                         world_size=world_size)
        drawn = per_epoch * global_batch
        self.old_blocks = round(drawn * replayed / (new_blocks + replayed))
        self.new_blocks = drawn - self.old_blocks
        self.new_tokens = len(new.ids)
        self.num_samples = drawn  # an epoch's blocks

    def plan(self, epoch: int) -> list[Tensor]:
        generator, block = epoch_generator(self.seed, epoch), self.block_size
        starts = torch.cat([torch.randint(self.new_tokens - block, (self.new_blocks,), generator=generator),
                            self.new_tokens + torch.randint(len(self.ids) - self.new_tokens - block, (self.old_blocks,),
                                                            generator=generator) if self.old_blocks else
                            torch.zeros(0, dtype=torch.long)])
        order = starts[torch.randperm(len(starts), generator=generator)].view(self.per_epoch, -1)
        return list(order[:, self.rank::self.world_size])


def replay_loader(new: Examples | Tokens, pool: Examples | Tokens | None, replayed: int, repeats: int,
                  cfg: DictConfig, ctx: DataContext, transform: BatchTransform | None = None,
                  pad_id: int = 0) -> Loader:
    """A training split of `new` examples (each `repeats` times an epoch) and `replayed` examples of `pool` (old
    ones), drawn afresh every epoch; batched by the data config `cfg`, through the batch `transform` (token ids
    are padded with `pad_id`). A text's blocks are drawn from every start of the new text and the old
    (data.batches_per_epoch, when set, fixes an epoch's batches)."""
    if isinstance(new, Tokens):
        loader: Loader = ReplayBlockLoader(new, pool, len(new) * repeats, replayed, cfg.get("batches_per_epoch"),
                                           batch_size=cfg.batch_size, seed=ctx.seed, rank=ctx.rank,
                                           world_size=ctx.world_size)
        return loader.to(ctx.device) if ctx.resident else loader
    both = join([new, pool], pad_id)
    kwargs = dict(batch_size=cfg.batch_size, shuffle=True, drop_last=True, seed=ctx.seed, rank=ctx.rank,
                  world_size=ctx.world_size)
    if both.lengths is not None:
        loader: TensorLoader = ReplayTextLoader(both.x, both.lengths, both.y, **kwargs)
    else:
        loader = ReplayLoader(both.x, both.y, transform=transform, **kwargs)
    loader.replaying(len(new), repeats, replayed if pool is not None else 0)
    return loader.to(ctx.device) if ctx.resident else loader


# --- raw inputs, as a client sends them ------------------------------------------------------------------

class _Named(io.BytesIO):
    """Image bytes that messages name by where they came from, not as a buffer object."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


def image_bytes(raw: Any) -> bytes:
    """The file a base64 image holds (the standard or URL-safe alphabet, line breaks, missing padding and a
    `data:image/...;base64,` prefix accepted, as nettrain serve accepts them)."""
    if not isinstance(raw, str):
        raise UserError(f"an image input must be a base64 string, not {type(raw).__name__}")
    body = "".join(DATA_URL.sub("", raw, count=1).split())
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if "-" in body or "_" in body else None,
                                validate=True)
    except (binascii.Error, ValueError) as e:
        raise UserError(f"the image input is not a base64 string ({e})") from None
    if not data:
        raise UserError("the image input is empty")
    return data


def _one_input(name: str, raw: Any, preprocessing: dict[str, Any]) -> Any:
    """One raw input checked and (images) decoded; a UserError says why it cannot be."""
    kind = preprocessing["kind"]
    if kind == "image":
        return decode(_Named(image_bytes(raw), f"the image of {name}"), int(preprocessing["image_size"]),
                      int(preprocessing["channels"]))
    if kind == "text":
        if not isinstance(raw, str):
            raise UserError(f"a text input must be a string, not {type(raw).__name__}")
        if not raw.strip():
            raise UserError("empty text")
        return raw
    if not isinstance(raw, dict):
        raise UserError(f"a row input must be an object {{column: value}}, not {type(raw).__name__}")
    absent = [c for c in preprocessing["features"] if c not in raw]
    if absent:
        raise UserError(f"the row has no {absent[0]!r}; the model needs: {', '.join(preprocessing['features'])}")
    return raw


def encode_raw(named: Sequence[tuple[str, Any]], preprocessing: dict[str, Any]
               ) -> tuple[list[int], Examples | None, list[tuple[str, str]]]:
    """(the positions of the inputs that could be encoded, their model inputs as `Examples` with no targets yet,
    (name, why) of the others). Inputs are raw as a client sent them: a base64 image, a text, a row dict;
    encoded with a trained model's `preprocessing` (kind image, text or tabular)."""
    kind = preprocessing.get("kind")
    if kind not in ("image", "text", "tabular"):
        raise UserError(f"the model records no preprocessing for raw inputs (kind={kind!r})")
    kept, values, failures = [], [], []
    for i, (name, raw) in enumerate(named):
        try:
            values.append(_one_input(name, raw, preprocessing))
            kept.append(i)
        except UserError as e:
            failures.append((name, str(e)))
    if not kept:
        return [], None, failures
    empty = torch.zeros(len(kept))
    if kind == "image":
        return kept, Examples(torch.stack(values), empty), failures
    if kind == "text":
        ids, lengths, _ = encode(Tokenizer.from_str(preprocessing["tokenizer"]), values)
        return kept, Examples(ids, empty, lengths), failures
    try:
        return kept, Examples(encode_rows(pd.DataFrame(values), preprocessing), empty), failures
    except UserError:  # a value that is not a number where the model took numbers: find whose, row by row
        return _rows_one_by_one(named, kept, values, failures, preprocessing)


def _rows_one_by_one(named: Sequence[tuple[str, Any]], kept: list[int], rows: list[dict[str, Any]],
                     failures: list[tuple[str, str]], preprocessing: dict[str, Any]
                     ) -> tuple[list[int], Examples | None, list[tuple[str, str]]]:
    good, encoded = [], []
    for i, row in zip(kept, rows):
        try:
            encoded.append(encode_rows(pd.DataFrame([row]), preprocessing))
            good.append(i)
        except UserError as e:
            failures.append((named[i][0], str(e).replace("the input", "the row")))
    if not good:
        return [], None, failures
    return good, Examples(torch.cat(encoded), torch.zeros(len(good))), failures


def label_name(label: Any) -> str:
    """A label as a class name: 3 and 3.0 are the class '3' (as a table's numeric classes are named)."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label).strip()


def targets_of(labels: Sequence[tuple[str, Any]], task: str, classes: list[str]
               ) -> tuple[list[int], Tensor, list[str], list[tuple[str, str]]]:
    """(the positions of the usable labels, their targets, the classes with the new ones appended, (name, why) of
    the others). Classification: class names (a name the model lacks is a new class, after its own, in the
    order of class names); regression: finite numbers."""
    kept, values, failures = [], [], []
    for i, (name, label) in enumerate(labels):
        if task == "regression":
            number = _number(label)
            if number is None:
                failures.append((name, f"label {label!r} is not a number; this model predicts numbers"))
                continue
            values.append(number)
        elif label is None or isinstance(label, (dict, list)) or not label_name(label):
            failures.append((name, f"label {label!r} is not a class name"))
            continue
        else:
            values.append(label_name(label))
        kept.append(i)
    if task == "regression":
        return kept, torch.tensor(values, dtype=torch.float32), classes, failures
    grown = classes + class_order([v for v in set(values) if v not in set(classes)])
    index = {name: i for i, name in enumerate(grown)}
    return kept, torch.tensor([index[v] for v in values], dtype=torch.long), grown, failures


def _number(label: Any) -> float | None:
    if isinstance(label, bool):
        return None
    try:
        value = float(label)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
