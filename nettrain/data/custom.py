"""Your own dataset: a `data` config with a `_target_` returning a torch Dataset of (tensor, label)
pairs, or a (train, val) or (train, val, test) tuple of them.

    # myconf/data/shapes.yaml          nettrain train --config-dir myconf data=shapes
    _target_: shapes.make_dataset      # called with the other keys below that are not nettrain's
    size: 32
    class_names: [circle, square]      # or the dataset's own `classes` attribute
    preprocessing:                     # how an image file becomes an input (for nettrain predict)
      {kind: image, image_size: 32, channels: 3, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
    batch_size: 32

A single Dataset is split into train and val by `val_fraction` (seeded by `trainer.seed`). The
dataset is read by DataLoader workers (`num_workers`) in the plan every loader follows, so runs
resume exactly. Without `preprocessing`, predict cannot turn files into inputs and says so; eval,
export and resume still work from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset

from nettrain.config.registry import DATA
from nettrain.config.user_code import instantiate
from nettrain.data.base import Data, DataContext
from nettrain.data.loaders import StreamLoader
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid

# nettrain's own data keys: never passed to the user's callable.
NETTRAIN_KEYS = DATA.user_keys


def build(cfg: DictConfig, ctx: DataContext) -> Data:
    node = OmegaConf.to_container(cfg, resolve=True)
    target = node["_target_"]
    made = instantiate("data", {k: v for k, v in node.items() if k not in NETTRAIN_KEYS}, {})
    parts = list(made) if isinstance(made, (tuple, list)) else [made]
    if not 1 <= len(parts) <= 3 or not all(isinstance(p, Sized) and hasattr(p, "__getitem__") for p in parts):
        raise UserError(f"data._target_={target} must return a torch Dataset or a (train, val[, test]) tuple of them, "
                        f"not {type(made).__name__}" + (f" of {len(parts)}" if isinstance(made, (tuple, list)) else ""))
    if len(parts) == 1:
        parts = _split(parts[0], node.get("val_fraction", 0.2), ctx.seed)
    for name, part in zip(("train", "val", "test"), parts):
        if len(part) == 0:
            raise UserError(f"data._target_={target}: the {name} set is empty")
    spec = _spec(node, parts[0])

    def loader(dataset: Dataset, train: bool) -> StreamLoader:
        return StreamLoader(dataset, batch_size=node["batch_size"] if train else ctx.eval_batch_size or node["batch_size"],
                            shuffle=train, drop_last=train, seed=ctx.seed, rank=ctx.rank, world_size=ctx.world_size,
                            num_workers=node.get("num_workers", 0), pin_memory=ctx.device.type == "cuda")

    return Data(spec=spec, train=loader(parts[0], True), val=loader(parts[1], False),
                test=loader(parts[2], False) if len(parts) == 3 else None)


def _split(dataset: Dataset, val_fraction: float, seed: int) -> list[Dataset]:
    """A seeded random split (the labels are not read: that would load every sample)."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise UserError(f"cannot split {n} sample(s) into train and val with data.val_fraction={val_fraction}")
    return [Subset(dataset, sorted(order[n_val:])), Subset(dataset, sorted(order[:n_val]))]


def _spec(node: dict[str, Any], train: Dataset) -> DataSpec:
    target = node["_target_"]
    x, y = _first(train, target)
    task = node.get("task") or "classification"
    if task not in ("classification", "regression"):
        raise invalid("data.task", task, "allowed: classification, regression")
    if task == "regression":
        class_names: list[str] = []
    else:
        names = node.get("class_names") or getattr(train, "classes", None) or getattr(getattr(train, "dataset", None), "classes", None)
        if not names:
            raise UserError(f"data._target_={target}: give data.class_names (a list, in label order) in the data "
                            f"config, or a `classes` attribute on the dataset")
        class_names = [str(n) for n in names]
    shape = list(x.shape)
    return DataSpec(input_shape=shape, num_classes=len(class_names) or 1, class_names=class_names, task=task,
                    preprocessing=_preprocessing(node.get("preprocessing"), shape))


def _first(dataset: Dataset, target: str) -> tuple[torch.Tensor, Any]:
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
        got = f"({', '.join(type(i).__name__ for i in item)})" if isinstance(item, (tuple, list)) else type(item).__name__
        raise UserError(f"data._target_={target} must yield (tensor, label) pairs, but item 0 is {got}; "
                        f"convert it to a tensor in the dataset (e.g. torchvision.transforms.ToTensor)")
    return item[0], item[1]


def _preprocessing(given: Any, shape: list[int]) -> dict[str, Any]:
    """The image preprocessing the config states, checked against the samples' shape; {} if none."""
    if not given:
        return {}
    keys = ("kind", "image_size", "channels", "mean", "std")
    if not isinstance(given, dict) or given.get("kind") != "image" or set(given) != set(keys):
        raise invalid("data.preprocessing", given, "must be null or {kind: image, image_size: N, channels: 1|3, "
                                                   "mean: [...], std: [...]} (how an image file becomes an input)")
    if not all(isinstance(v, list) and len(v) == given["channels"] for v in (given["mean"], given["std"])):
        raise invalid("data.preprocessing", given, "mean and std need one number per channel")
    expected = [given["channels"], given["image_size"], given["image_size"]]
    if shape != expected:
        raise invalid("data.preprocessing", given, f"it makes inputs of shape {expected}, but the dataset yields {shape}")
    return dict(given)
