"""Standard benchmarks from torchvision's on-disk formats under `data.root` (`data=mnist`,
`data=fashion_mnist`, `data=cifar10`), loaded whole as uint8 tensors into `TensorLoader`.

The official training set is split into train and val (seeded, stratified `data.val_fraction`);
the official test set is the test split. Normalization is each dataset's conventional mean/std.
`data.download=true` fetches the files when they are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision.datasets
from omegaconf import DictConfig

from nettrain.config.rules import absolute
from nettrain.data.augment import image_batch_transform
from nettrain.data.base import Data, DataContext, tensor_loader
from nettrain.data.image_defaults import auto_augment
from nettrain.data.labels import balanced_weights, split_indices
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError

# data.name -> torchvision class, where its files live under data.root, conventional mean and std.
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"cls": "MNIST", "files": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
              "mean": [0.1307], "std": [0.3081]},
    "fashion_mnist": {"cls": "FashionMNIST", "files": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                      "mean": [0.2860], "std": [0.3530]},
    "cifar10": {"cls": "CIFAR10", "files": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
                "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
}


def _load(name: str, root: Path, train: bool, download: bool) -> Any:
    cls = getattr(torchvision.datasets, DATASETS[name]["cls"])
    where = root / DATASETS[name]["files"]
    try:
        return cls(str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" / "Error downloading ..."
        if download:
            raise UserError(f"could not download {name} into {root}: {str(e).splitlines()[0]}; put its files "
                            f"at {where} by hand") from None
        raise UserError(f"{name} not found in {root} (expected {where}): pass data.download=true to fetch it, "
                        f"or give data.root=DIR where those files are") from None
    except OSError as e:  # offline
        raise UserError(f"could not download {name} into {root}: {e}; put its files at {where} by hand") from None


def _tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, C, H, W] images and long labels (MNIST keeps [N, H, W] tensors, CIFAR [N, H, W, C] arrays)."""
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def build(cfg: DictConfig, ctx: DataContext) -> Data:
    info = DATASETS[cfg.name]
    root = Path(absolute(cfg.root))
    train_set = _load(cfg.name, root, True, bool(cfg.download))
    x, y = _tensors(train_set)
    test_x, test_y = _tensors(_load(cfg.name, root, False, False))
    class_names = [str(i) for i in range(10)] if cfg.name == "mnist" else list(train_set.classes)
    train_idx, val_idx = split_indices(y.tolist(), cfg.val_fraction, ctx.seed, class_names=class_names,
                                       what=f"the {cfg.name} training set")
    channels, size = x.shape[1], x.shape[2]
    spec = DataSpec(input_shape=[channels, size, size], num_classes=len(class_names), class_names=class_names,
                    preprocessing={"kind": "image", "image_size": size, "channels": channels,
                                   "mean": info["mean"], "std": info["std"]})
    train_idx, val_idx = torch.tensor(train_idx), torch.tensor(val_idx)
    plain = image_batch_transform(info["mean"], info["std"])
    augment = auto_augment(channels, size)[0] if cfg.augment == "auto" else cfg.augment
    augmented = image_batch_transform(info["mean"], info["std"], augment, seed=ctx.seed, rank=ctx.rank)
    return Data(spec=spec,
                train=tensor_loader(x[train_idx], y[train_idx], cfg, ctx, train=True, transform=augmented),
                val=tensor_loader(x[val_idx], y[val_idx], cfg, ctx, train=False, transform=plain),
                test=tensor_loader(test_x, test_y, cfg, ctx, train=False, transform=plain),
                class_weights=balanced_weights(y[train_idx].tolist(), len(class_names))
                if cfg.get("class_weights") == "balanced" else None)
