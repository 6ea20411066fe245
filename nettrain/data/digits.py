"""scikit-learn's 8x8 handwritten digits: real data that ships with scikit-learn, so the default
run needs no download. Pixels (0..16) are scaled to [0, 1] and standardized; train/val is a
stratified split seeded by the run's seed."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from nettrain.data.base import Data, DataContext
from nettrain.data.loaders import TensorLoader
from nettrain.data.spec import DataSpec

MEAN, STD = 0.3053, 0.3760  # of the whole set scaled to [0, 1]: fixed, so predict can reproduce it


def build(cfg: DictConfig, ctx: DataContext) -> Data:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div_(16.0).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(range(len(y)), test_size=cfg.val_fraction, random_state=ctx.seed,
                                          stratify=digits.target)
    spec = DataSpec(input_shape=[1, 8, 8], num_classes=10, class_names=[str(i) for i in range(10)],
                    preprocessing={"kind": "image", "image_size": 8, "channels": 1,
                                   "mean": [MEAN], "std": [STD]})

    def loader(idx: list[int], train: bool) -> TensorLoader:
        t = torch.tensor(idx)
        tl = TensorLoader(x[t], y[t], batch_size=cfg.batch_size if train else ctx.eval_batch_size or cfg.batch_size,
                          shuffle=train, drop_last=train, seed=ctx.seed, rank=ctx.rank, world_size=ctx.world_size)
        return tl.to(ctx.device) if ctx.resident else tl

    return Data(spec=spec, train=loader(train_idx, True), val=loader(val_idx, False))
