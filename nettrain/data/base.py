"""What every data source gives a run: its loaders, the spec a model is built from, and what the run needs to
know beside (class weights, a fingerprint of what was read, a table's rows); and what a source is told."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from nettrain.data.loaders import BatchTransform, Loader, TensorLoader
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError


@dataclass
class Data:
    spec: DataSpec
    train: Loader
    val: Loader
    test: Loader | None = None
    class_weights: list[float] | None = None  # per class, for a weighted loss (rare positives)
    # What was read, in brief ({"files": n, "digest": hex}): a resumed run warns when it changed,
    # since the data order it replays is no longer the interrupted run's.
    fingerprint: dict[str, Any] | None = None
    # The training split's inputs and targets, where the data is a table held in memory: what a model
    # with a memory (model.memory=true) remembers.
    rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def close(self) -> None:
        """Stop the loaders' worker processes (a run's end, however it ends)."""
        for loader in (self.train, self.val, self.test):
            if loader is not None:
                loader.close()


@dataclass
class DataContext:
    """What a builder needs to know about the run, beyond its own config."""

    seed: int = 0
    device: torch.device = torch.device("cpu")
    resident: bool = False          # put in-memory data on `device` once, not per batch
    eval_batch_size: int | None = None
    rank: int = 0
    world_size: int = 1
    # The preprocessing of the model the data is for (eval, update): a source that encodes raw data by it (a
    # language model's vocabulary) uses it instead of deriving its own from the data.
    model_preprocessing: dict[str, Any] | None = None
    # The classes of the model the data is for (eval, update): kept first, in its order, so its class indices
    # stay; labels it lacks follow, in the source's own order.
    classes: list[str] | None = None

    def preprocessing_for(self, kind: str) -> dict[str, Any] | None:
        """The model's preprocessing (tokenizer, statistics and categories, normalization and size) for data of
        `kind`, to encode it as the model was trained, never fitted anew on it (None: no model, fit it); a model
        trained on another kind of data cannot take these inputs."""
        if self.model_preprocessing is None:
            return None
        if self.model_preprocessing.get("kind") != kind:
            raise UserError(f"the model was trained on {self.model_preprocessing.get('kind', 'unknown')} data; this "
                            f"data is {kind} (give new data of the kind it was trained on)")
        return self.model_preprocessing


def tensor_loader(x: torch.Tensor, y: torch.Tensor, cfg: DictConfig, ctx: DataContext, *, train: bool,
                  transform: BatchTransform | None = None) -> TensorLoader:
    """In-memory data as a split's loader: shuffled, full batches for training; the eval batch size,
    in order, for evaluation; resident on the training device when the run asks for it."""
    loader = TensorLoader(x, y, batch_size=cfg.batch_size if train else ctx.eval_batch_size or cfg.batch_size,
                          shuffle=train, drop_last=train, seed=ctx.seed, transform=transform,
                          rank=ctx.rank, world_size=ctx.world_size)
    return loader.to(ctx.device) if ctx.resident else loader


def files_fingerprint(paths: list[Path], root: Path | None = None) -> dict[str, Any]:
    """The files' names (relative to `root`) and sizes, hashed; content is read only for one file
    (a CSV), where reading it all is cheap next to parsing it."""
    digest = hashlib.sha256()
    if root is None and len(paths) == 1:
        with open(paths[0], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    else:
        for path in sorted(paths):
            digest.update(f"{path.relative_to(root) if root else path}\0{path.stat().st_size}\n".encode())
    return {"files": len(paths), "digest": digest.hexdigest()[:16]}
