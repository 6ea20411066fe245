"""Folders of images, one subfolder per class (`data=imagefolder`), or Oxford-IIIT Pet (`data.source=oxford_pets`).

Layouts of `data.root`:
  root/train/<class>/...  root/val/<class>/...  [root/test/<class>/...]   (val optional: else split)
  root/<class>/...                                 split by a seeded, stratified data.val_fraction
Files are found recursively inside each class folder; hidden files and folders (.DS_Store,
an old .nettrain_cache) are ignored. Every image is decoded by `transforms.decode` (any mode to
data.channels, shorter side to data.image_size, centre crop) into uint8; the loaders normalize and
augment whole batches on the training device (`augment.py`).

Two paths: `data.cache=true` decodes each image once into a tensor file (`cache.py`) and serves it
with `TensorLoader` (resident on the GPU when training there); otherwise `StreamLoader` decodes on
the fly in `data.num_workers` DataLoader workers. Both give the same batches for the same seed.

Unreadable files (`data.on_bad_file`): `error` stops before training naming the file (every image
is fully decoded first); `skip` leaves them out, counted and named in the log. Without the cache,
`skip` checks each file's header up front; an image damaged past a valid header is found when
first decoded, named in the log and replaced by the next image of its folder.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import OxfordIIITPet

from nettrain.config.rules import absolute
from nettrain.data import image_defaults
from nettrain.data.augment import image_batch_transform
from nettrain.data.base import Data, DataContext, files_fingerprint, tensor_loader
from nettrain.data.cache import cached_images, check_fits, decode_each, default_cache_dir
from nettrain.data.labels import balanced_weights, keep_order, split_indices
from nettrain.data.loaders import EpochReport, Loader, StreamLoader
from nettrain.data.spec import DataSpec
from nettrain.data.transforms import BadImageError, channel_stats, decode, open_file
from nettrain.errors import UserError, invalid

log = logging.getLogger("nettrain")

OXFORD_PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
SHOW_BAD_FILES = 20  # named one per line in the log; the rest are counted


@dataclass
class Folder:
    """Labelled image files: one split, or everything before the train/val split (name 'all')."""

    name: str
    files: list[Path]
    labels: list[int]
    images: Tensor | None = field(default=None, repr=False)   # uint8 [N, C, S, S] when cached

    def take(self, indices: list[int], name: str | None = None) -> Folder:
        images = self.images.index_select(0, torch.tensor(indices, dtype=torch.long)) if self.images is not None else None
        return Folder(name or self.name, [self.files[i] for i in indices], [self.labels[i] for i in indices], images)


def _is_hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def class_files(directory: Path) -> dict[str, list[Path]]:
    """{class name: its files, sorted} for each non-hidden subfolder of `directory`."""
    classes = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[sub.name] = sorted(p for p in sub.rglob("*") if p.is_file() and not _is_hidden(p, sub))
    return classes


def _folder(name: str, directory: Path, class_names: list[str]) -> Folder:
    files, labels = [], []
    for cls, paths in class_files(directory).items():
        if cls not in class_names:
            raise UserError(f"{directory / cls} is not one of the classes of the training folder "
                            f"({', '.join(class_names)}); every split must use the same class folders")
        if not paths:
            raise UserError(f"class folder {directory / cls} has no images")
        files += paths
        labels += [class_names.index(cls)] * len(paths)
    return Folder(name, files, labels)


def scan_folders(root: Path, known: list[str] | None = None) -> tuple[list[Folder], list[str]]:
    """The folders of an image-folder root (layouts in the module doc) and the class names (a trained model's
    `known` classes first, in its order: new images for it may hold only some of them, or only new ones)."""
    if not root.is_dir():
        raise invalid("data.root", str(root), "no such directory (give a folder of class subfolders)")
    train_dir = root / "train"
    base = train_dir if train_dir.is_dir() else root
    classes = class_files(base)
    if not classes or len(keep_order(list(classes), known)) < 2:
        found = f"only {len(classes)} class folder ({', '.join(classes)})" if classes else "no class folders"
        raise UserError(f"{base} has {found}; an image folder needs at least two class subfolders, "
                        f"e.g. {base / 'cat'}/*.jpg and {base / 'dog'}/*.jpg")
    for cls, paths in classes.items():
        if not paths:
            raise UserError(f"class folder {base / cls} has no images")
    class_names = keep_order(list(classes), known)
    if base is root:
        return [_folder("all", root, class_names)], class_names
    folders = [_folder("train" if (root / "val").is_dir() else "all", train_dir, class_names)]
    folders += [_folder(name, root / name, class_names) for name in ("val", "test") if (root / name).is_dir()]
    return folders, class_names


def oxford_pets(root: Path, download: bool) -> tuple[list[Folder], list[str]]:
    """torchvision's Oxford-IIIT Pet, labelled cat (0) or dog (1): 'trainval' (split into train and
    val here) and 'test'."""
    where = root / "oxford-iiit-pet"
    try:
        splits = {name: OxfordIIITPet(str(root), split=split, target_types="binary-category", download=download)
                  for name, split in (("all", "trainval"), ("test", "test"))}
    except RuntimeError:  # torchvision: "Dataset not found. You can use download=True to download it"
        raise UserError(f"Oxford-IIIT Pet not found in {where} (expected images/ and annotations/ there): pass "
                        f"data.download=true to fetch it (~800 MB), or download images.tar.gz and "
                        f"annotations.tar.gz from {OXFORD_PETS_URL} and extract both into {where}") from None
    except OSError as e:  # offline, or the server refused
        raise UserError(f"could not download Oxford-IIIT Pet into {where}: {str(e).splitlines()[0]}; download "
                        f"images.tar.gz and annotations.tar.gz from {OXFORD_PETS_URL} by hand and extract both "
                        f"into {where}") from None
    # torchvision keeps the image paths and binary labels it parsed from annotations/*.txt here.
    return [Folder(name, list(ds._images), list(ds._bin_labels)) for name, ds in splits.items()], ["cat", "dog"]


def find_images(cfg: DictConfig, known: list[str] | None = None) -> tuple[list[Folder], list[str], Path]:
    """The labelled files `cfg` (the data group) names, the class names (`known` ones first), and the data's root."""
    root = Path(absolute(cfg.root))
    if cfg.get("source", "folder") == "oxford_pets":
        folders, class_names = oxford_pets(root, bool(cfg.get("download", False)))
        return folders, class_names, root / "oxford-iiit-pet"
    folders, class_names = scan_folders(root, known)
    return folders, class_names, root


def header_problem(path: Path) -> str | None:
    """Why `path` is not an image by its header (None: it looks like one). Cheap: no pixel is decoded."""
    try:
        open_file(path).close()  # identifying the format and size is the check
        return None
    except BadImageError as e:
        return str(e)


class ImageFiles(Dataset):
    """Decodes one image per item for `StreamLoader` workers: (uint8 [C, S, S], label)."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int, channels: int) -> None:
        self.files, self.labels, self.image_size, self.channels = files, labels, image_size, channels
        self.reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        for offset in range(len(self.files)):
            i = (index + offset) % len(self.files)
            try:
                return decode(self.files[i], self.image_size, self.channels), self.labels[i]
            except BadImageError as e:
                if i not in self.reported:
                    self.reported.add(i)
                    log.warning("skipped: %s (using the next image in its place)", e)
        raise UserError("no image of this folder could be read")


def _screen(folder: Folder, cfg: DictConfig, root: Path, cache_dir: Path | None) -> dict[int, str]:
    """{index: reason} of the folder's unreadable files; fills `folder.images` when caching."""
    if cache_dir is not None:
        folder.images, bad = cached_images(folder.files, root=root, name=folder.name, image_size=cfg.image_size,
                                           channels=cfg.channels, cache_dir=cache_dir)
        return bad
    if cfg.on_bad_file == "error":  # nothing may fail once training has started: decode everything now
        return {i: str(r) for i, r in decode_each(folder.files, cfg.image_size, cfg.channels,
                                                  f"checking {folder.name} images") if isinstance(r, BadImageError)}
    return {i: problem for i, path in enumerate(folder.files) if (problem := header_problem(path))}


def _report_bad(bad: list[str], on_bad_file: str) -> None:
    if not bad:
        return
    if on_bad_file == "error":
        more = f" (and {len(bad) - 1} more unreadable file(s))" if len(bad) > 1 else ""
        raise UserError(f"{bad[0]}{more}; remove it, or pass data.on_bad_file=skip to train without it")
    log.warning("skipped %d unreadable file(s) (data.on_bad_file=skip):", len(bad))
    for reason in bad[:SHOW_BAD_FILES]:
        log.warning("  %s", reason)
    if len(bad) > SHOW_BAD_FILES:
        log.warning("  ... and %d more", len(bad) - SHOW_BAD_FILES)


def build(cfg: DictConfig, ctx: DataContext) -> Data:
    folders, class_names, root = find_images(cfg, ctx.classes)
    present = sorted({label for folder in folders for label in folder.labels})  # classes this data has images of
    trained = ctx.preprocessing_for("image")
    if trained is not None:
        image_defaults.require(cfg, trained)
    chosen = image_defaults.choose_shape(cfg, folders[0].files)  # data.channels/image_size/augment=auto: from the training images
    cache_dir = None
    if cfg.cache:
        check_fits(sum(len(f.files) for f in folders), cfg.channels, cfg.image_size)
        cache_dir = Path(absolute(cfg.cache_dir)) if cfg.get("cache_dir") else default_cache_dir()
    bad: list[str] = []
    parts: dict[str, Folder] = {}
    for folder in folders:
        problems = _screen(folder, cfg, root, cache_dir)
        bad += [problems[i] for i in sorted(problems)]
        parts[folder.name] = folder.take([i for i in range(len(folder.files)) if i not in problems])
    _report_bad(bad, cfg.on_bad_file)
    if "all" in parts:
        everything = parts.pop("all")
        _require_every_class(everything, class_names, present, "")
        train_idx, val_idx = split_indices(everything.labels, cfg.val_fraction, ctx.seed, class_names=class_names,
                                           what=f"the images of {root}")
        parts["train"], parts["val"] = everything.take(train_idx, "train"), everything.take(val_idx, "val")
    _require_every_class(parts["train"], class_names, present, " for training")
    chosen += image_defaults.choose_normalization(cfg, parts["train"].files, parts["train"].images)
    image_defaults.report(chosen)
    mean, std = channel_stats(cfg.mean, cfg.std, cfg.channels)

    spec = DataSpec(input_shape=[cfg.channels, cfg.image_size, cfg.image_size], num_classes=len(class_names),
                    class_names=class_names,
                    preprocessing={"kind": "image", "image_size": cfg.image_size, "channels": cfg.channels,
                                   "mean": mean, "std": std})

    def loader(part: Folder, train: bool) -> Loader:
        transform = image_batch_transform(mean, std, cfg.augment if train else "none", seed=ctx.seed, rank=ctx.rank)
        labels = torch.tensor(part.labels, dtype=torch.long)
        if part.images is not None:
            return tensor_loader(part.images, labels, cfg, ctx, train=train, transform=transform)
        return StreamLoader(ImageFiles(part.files, part.labels, cfg.image_size, cfg.channels),
                            batch_size=cfg.batch_size if train else ctx.eval_batch_size or cfg.batch_size,
                            shuffle=train, drop_last=train, seed=ctx.seed, transform=transform, rank=ctx.rank,
                            world_size=ctx.world_size, num_workers=cfg.num_workers,
                            pin_memory=ctx.device.type == "cuda",
                            on_first_epoch=decode_hint(sum(len(f.files) for f in parts.values()), cfg)
                            if train and ctx.rank == 0 else None)

    counts = Counter(parts["train"].labels)
    shown = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(class_names[:10]))
    log.info("%s: %d train / %d val%s images, %d classes (%s%s), %d px, %d channel(s), %s", root,
             len(parts["train"].files), len(parts["val"].files),
             f" / {len(parts['test'].files)} test" if "test" in parts else "", len(class_names), shown,
             ", ..." if len(class_names) > 10 else "", cfg.image_size, cfg.channels,
             "cached in memory" if cache_dir else f"decoded on the fly by {cfg.num_workers} worker(s)")
    return Data(spec=spec, train=loader(parts["train"], True), val=loader(parts["val"], False),
                test=loader(parts["test"], False) if "test" in parts else None,
                class_weights=balanced_weights(parts["train"].labels, len(class_names))
                if cfg.get("class_weights") == "balanced" else None,
                fingerprint=files_fingerprint([*parts["train"].files, *parts["val"].files], root))


# An epoch that spends at least this share of its time (and DECODE_HINT_SECONDS) waiting for images
# is bound by decoding. The wait understates it on the CPU, where the decoding workers also slow the
# steps they share the cores with: 2,000 28-px PNGs, an MLP, 2 cores: it waited 1.2 of 2.8 s (43 %),
# and cached epochs took 0.5 s instead of 2.2 s.
DECODE_BOUND = 0.3
DECODE_HINT_SECONDS = 1.0


def decode_hint(images: int, cfg: DictConfig) -> EpochReport:
    """The train loader's report on its first epoch: one hint to cache when decoding bounded it."""
    def report(epoch: int, waited: float, seconds: float) -> None:
        if waited >= DECODE_HINT_SECONDS and waited >= DECODE_BOUND * seconds:
            size = images * cfg.channels * cfg.image_size ** 2  # uint8 pixels
            log.info("epoch %d waited %.1f of %.1f s for images to decode: data.cache=true decodes each image once "
                     "(%s images, ~%s in memory)", epoch + 1, waited, seconds, f"{images:,}", _size(size))
    return report


def _size(n: float) -> str:
    """A byte count in bytes, kB, MB or GB (decimal), with at least two significant digits."""
    units = ["bytes", "kB", "MB", "GB"]
    while n >= 1000 and len(units) > 1:
        n, units = n / 1000, units[1:]
    return f"{n:.1f} {units[0]}" if n < 10 and units[0] != "bytes" else f"{n:.0f} {units[0]}"


def _require_every_class(folder: Folder, class_names: list[str], present: list[int], purpose: str) -> None:
    """Every class the data has images of (`present`) keeps at least one readable one in `folder`."""
    missing = [class_names[i] for i in present if i not in set(folder.labels)]
    if missing:
        raise UserError(f"class {missing[0]!r} has no readable images{purpose} "
                        f"(every class needs at least one; check data.root)")
