"""Data-pipeline benchmark: samples/s of a training epoch over an image folder, and of in-memory loaders.

    python scripts/bench_data.py [--images 2000] [--size 64] [--source-size 375] [--channels 8,16,32] [--json]
    python scripts/bench_data.py --root ~/data/cats_dogs/train     # your own photos instead

Generates a folder of JPEGs in a temp dir (two classes; sides from --source-size to 1.5x that: the
default 375 is the size of typical pet photos, e.g. Oxford-IIIT Pet's 500x375), or reads --root (a
folder of class folders), then trains a small CNN (nettrain's `cnn` model, channels-last as nettrain
trains it) at --size px for one epoch per case, in one process on this machine's cores:

  torchvision   ImageFolder + DataLoader (RandomResizedCrop, flip, ToTensor, Normalize per sample)
  uncached      nettrain data=imagefolder, cache=false: StreamLoader workers decode, batched augmentation
  cached        nettrain data=imagefolder, cache=true: an epoch after the first (decoded once, in memory)

and, without a model, the loaders alone over the same in-memory tensors:

  DataLoader    torch DataLoader over a TensorDataset (per-sample __getitem__ + collate)
  TensorLoader  nettrain's batched slicing (one permutation per epoch)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_folder(root: Path, images: int, size: int) -> Path:
    """root/<class>/*.jpg: noisy two-colour images, sides `size` to 1.5 x `size` (every path resizes)."""
    rng = np.random.default_rng(0)
    for i in range(images):
        cls = ("cat", "dog")[i % 2]
        w, h = size + int(rng.integers(0, size // 2 + 1)), size + int(rng.integers(0, size // 4 + 1))
        base = np.array((200, 80, 60) if cls == "cat" else (60, 80, 200))
        pixels = (base + rng.integers(-60, 60, (h, w, 3))).clip(0, 255).astype(np.uint8)
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / cls / f"{i:05d}.jpg", quality=90)
    return root


def small_cnn(channels: list[int], in_channels: int = 3, classes: int = 2) -> torch.nn.Module:
    from nettrain.data.spec import DataSpec
    from nettrain.models.build import build_model

    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "model" / "cnn.yaml"), {"channels": channels})
    model = build_model(cfg, DataSpec(input_shape=[in_channels, 64, 64], num_classes=classes, class_names=[]))
    return model.to(memory_format=torch.channels_last)  # as nettrain trains convnets (trainer.channels_last)


def train_epoch(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Samples/s of one epoch of SGD steps over `batches` (loading included)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def loader_epoch(batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> float:
    seen, start = 0, time.perf_counter()
    for _, y in batches():
        seen += len(y)
    return seen / (time.perf_counter() - start)


def nettrain_data(root: Path, cache_dir: Path | None, size: int, batch: int, workers: int):
    """nettrain's image-folder data: cached in cache_dir, or (None) decoded on the fly."""
    from nettrain.data.base import DataContext
    from nettrain.data.build import build_data

    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "data" / "imagefolder.yaml"),
                          {"root": str(root), "image_size": size, "batch_size": batch, "num_workers": workers,
                           "cache": cache_dir is not None, "cache_dir": str(cache_dir) if cache_dir else None})
    return build_data(cfg, DataContext(seed=0))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="the model's input size (px)")
    parser.add_argument("--source-size", type=int, default=375, help="the generated JPEGs' shorter side (px)")
    parser.add_argument("--root", type=Path, default=None, help="an existing folder of class folders to read instead")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both streaming paths)")
    parser.add_argument("--channels", default="8,16,32", help="the small CNN's conv widths")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per case; the median is reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import torchvision
    from torchvision import transforms

    from nettrain.data.loaders import TensorLoader

    if args.threads:
        torch.set_num_threads(args.threads)
    model = small_cnn([int(c) for c in args.channels.split(",")])
    epochs = iter(range(1_000_000))  # a fresh epoch number per pass: new shuffles and augmentations

    def measure(batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, float]:
        """Median samples/s of epochs of the loader alone, and of epochs training the small CNN on it."""
        return {"data only": statistics.median(loader_epoch(lambda: batches(next(epochs))) for _ in range(args.repeats)),
                "with model": statistics.median(train_epoch(model, batches(next(epochs))) for _ in range(args.repeats))}

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root.expanduser().resolve() if args.root else make_folder(Path(tmp) / "images", args.images,
                                                                                 args.source_size)
        augment = transforms.Compose([transforms.RandomResizedCrop(args.size, scale=(0.25, 1.0)),
                                      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                      transforms.Normalize(MEAN, STD)])
        folder = torchvision.datasets.ImageFolder(str(root), transform=augment)
        loader = torch.utils.data.DataLoader(folder, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=args.workers, persistent_workers=args.workers > 0)
        results["torchvision ImageFolder + DataLoader"] = measure(lambda epoch, loader=loader: loader)
        del loader  # its persistent workers would compete with the next cases
        streamed = nettrain_data(root, None, args.size, args.batch_size, args.workers)
        results["nettrain uncached (StreamLoader)"] = measure(streamed.train.batches)
        del streamed
        start = time.perf_counter()
        cached = nettrain_data(root, Path(tmp) / "cache", args.size, args.batch_size, args.workers)
        n = sum(len(y) for _, y in cached.train.batches(next(epochs)))
        first = n / (time.perf_counter() - start)
        results["nettrain cached, epochs after the first"] = measure(cached.train.batches)

    x = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8).float()
    y = torch.randint(0, 10, (50_000,))
    dataset = torch.utils.data.TensorDataset(x, y)
    fast = TensorLoader(x, y, batch_size=args.batch_size, shuffle=True, seed=0, drop_last=True)
    in_memory = {
        "DataLoader(TensorDataset)": statistics.median(loader_epoch(lambda: torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)) for _ in range(args.repeats)),
        "nettrain TensorLoader": statistics.median(loader_epoch(lambda: fast.batches(next(epochs)))
                                                   for _ in range(args.repeats)),
    }
    baseline = results["torchvision ImageFolder + DataLoader"]
    cached_rates = results["nettrain cached, epochs after the first"]
    summary = {"cached_vs_imagefolder_with_model": cached_rates["with model"] / baseline["with model"],
               "cached_vs_imagefolder_data_only": cached_rates["data only"] / baseline["data only"],
               "tensorloader_vs_dataloader": in_memory["nettrain TensorLoader"] / in_memory["DataLoader(TensorDataset)"]}
    if args.json:
        print(json.dumps({"image_folder": results, "cached_first_epoch_data_only": first, "in_memory": in_memory,
                          **summary, "threads": torch.get_num_threads(), "images": args.images,
                          "size": args.size, "source_size": args.source_size, "cnn_channels": args.channels}, indent=2))
        return 0
    source = args.root or f"{args.images} JPEGs of {args.source_size}+ px"
    print(f"{source} -> {args.size} px, small CNN [{args.channels}], batch "
          f"{args.batch_size}, {args.workers} workers, {torch.get_num_threads()} torch threads; samples/s, "
          f"median of {args.repeats} epochs")
    width = 52
    print(f"  {'image folder':<{width}}  {'data only':>10}  {'with model':>10}")
    for name, rates in results.items():
        print(f"  {name:<{width}}  {rates['data only']:>10,.0f}  {rates['with model']:>10,.0f}")
    print(f"  {'(nettrain cached, first epoch: decode + cache)':<{width}}  {first:>10,.0f}")
    for name, rate in in_memory.items():
        print(f"  {'in memory, 50k x 3x32x32: ' + name:<{width}}  {rate:>10,.0f}")  # data only
    print(f"cached vs ImageFolder + DataLoader: {summary['cached_vs_imagefolder_with_model']:.1f}x with the model, "
          f"{summary['cached_vs_imagefolder_data_only']:.1f}x data only; TensorLoader vs DataLoader: "
          f"{summary['tensorloader_vs_dataloader']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
