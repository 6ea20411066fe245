"""check-data for an image folder (`data=imagefolder`): images per class and split, class imbalance, image modes
and sizes, unreadable files (every image is fully decoded), and exact duplicates (same bytes) between train and
val or test, i.e. leakage, on the split training makes."""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from nettrain.commands.report import per_class_table, show_list, show_summary, weights_hint
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.data.image_defaults import choose_shape
from nettrain.data.imagefolder import find_images
from nettrain.data.labels import split_indices
from nettrain.data.transforms import BadImageError, open_file
from nettrain.errors import UserError
from nettrain.runtime import available_cores


@dataclass
class ImageInfo:
    path: Path
    label: int
    digest: str = ""
    size: tuple[int, int] | None = None
    mode: str = ""
    error: str | None = None


def _inspect(info: ImageInfo) -> ImageInfo:
    """Hash the file's bytes, read its size and mode, and decode every pixel."""
    try:
        info.digest = hashlib.sha256(info.path.read_bytes()).hexdigest()
        with open_file(info.path) as img:
            info.size, info.mode = img.size, img.mode
            img.load()
    except BadImageError as e:
        info.error = str(e).removeprefix(f"cannot read image {info.path}: ")  # the report names the file itself
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        info.error = str(e).splitlines()[0] if str(e) else type(e).__name__
    return info


def report(cfg: DictConfig, out: Console) -> list[str]:
    folders, class_names, root = find_images(cfg.data)
    for choice in choose_shape(cfg.data, folders[0].files):
        out.print(f"data auto: {choice}")
    splits: dict[str, list[ImageInfo]] = {}
    with ThreadPoolExecutor(max_workers=available_cores()) as pool:
        for folder in folders:
            items = [ImageInfo(p, y) for p, y in zip(folder.files, folder.labels)]
            splits[folder.name] = list(pool.map(_inspect, items))
    unreadable = [i for items in splits.values() for i in items if i.error]
    if "all" in splits:  # the split training makes: over the readable images, same fraction and seed
        readable = [i for i in splits.pop("all") if not i.error]
        train_idx, val_idx = split_indices([i.label for i in readable], cfg.data.val_fraction, cfg.trainer.seed,
                                           class_names=class_names, what=f"the images of {root}")
        splits = {"train": [readable[i] for i in train_idx], "val": [readable[i] for i in val_idx], **splits}

    out.print(f"[bold]{root}[/]  {sum(len(v) for v in splits.values()) + len(unreadable)} files, "
              f"{len(class_names)} classes, splits: {', '.join(splits)}")
    counts = {name: Counter(i.label for i in items if not i.error) for name, items in splits.items()}
    out.print(per_class_table("images per class", list(enumerate(class_names)), counts))
    train_counts = [counts["train"][c] for c in range(len(class_names))]
    imbalance = max(train_counts) / max(min(train_counts), 1)
    out.print(f"imbalance (largest / smallest training class): {imbalance:.1f}x{weights_hint(cfg, imbalance)}")

    readable = [i for items in splits.values() for i in items if not i.error]
    table = Table(title="image modes and sizes")
    table.add_column("mode")
    table.add_column("images", justify="right")
    for mode, n in Counter(i.mode for i in readable).most_common():
        table.add_row(mode, str(n))
    out.print(table)
    if readable:
        widths, heights = sorted(i.size[0] for i in readable), sorted(i.size[1] for i in readable)
        small = sum(min(i.size) < cfg.data.image_size for i in readable)
        out.print(f"width {widths[0]}..{widths[-1]} (median {widths[len(widths) // 2]}), height {heights[0]}..{heights[-1]} "
                  f"(median {heights[len(heights) // 2]}); {small} image(s) smaller than data.image_size="
                  f"{cfg.data.image_size} (upscaled)")
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in Counter(i.size for i in readable).most_common(3))
        out.print(f"most common sizes: {sizes}")

    problems = []
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable file(s)")
        action = ("training skips them (data.on_bad_file=skip)" if cfg.data.get("on_bad_file") == "skip"
                  else "training stops on them; data.on_bad_file=skip leaves them out")
        show_list(out, f"unreadable files: {len(unreadable)} ({action})",
              [f"{i.path}: {i.error}" for i in unreadable])
    leaks = _leaks(splits, class_names)
    if leaks:
        problems.append(f"{len(leaks)} val/test image(s) identical to training images (leakage)")
        show_list(out, f"leakage: {len(leaks)} val/test image(s) have the same bytes as a training image", leaks)
    show_summary(out, problems)
    return problems


def _leaks(splits: dict[str, list[ImageInfo]], class_names: list[str]) -> list[str]:
    """Each val/test image whose bytes equal a training image's, named with its twin."""
    train: dict[str, ImageInfo] = {}
    for i in splits.get("train", []):
        if not i.error:
            train.setdefault(i.digest, i)
    leaks = []
    for name, items in splits.items():
        if name == "train":
            continue
        for i in items:
            twin = train.get(i.digest) if not i.error else None
            if twin is not None:
                labels = "" if twin.label == i.label else (f" (labelled {class_names[twin.label]!r} vs "
                                                           f"{class_names[i.label]!r})")
                leaks.append(f"{i.path} = {twin.path}{labels}")
    return leaks




def tensors_report(cfg: DictConfig, out: Console) -> list[str]:
    """Any other dataset, as the loaders serve it: class balance per split, duplicates across splits."""
    data = build_data(cfg.data, DataContext(seed=cfg.trainer.seed))
    splits = {name: loader for name, loader in (("train", data.train), ("val", data.val), ("test", data.test))
              if loader is not None and hasattr(loader, "x")}
    source = f"data={cfg.data.name}" if cfg.data.get("name") else f"data._target_={cfg.data.get('_target_')}"
    if "train" not in splits:  # streamed from the source's own Dataset: nothing to look at short of reading it all
        raise UserError(f"check-data cannot look inside {source}: its samples are read one by one by a Dataset, not "
                        f"held in memory; it checks data=imagefolder, csv, text, text_lm and in-memory datasets")
    out.print(f"[bold]{source}[/]  input {data.spec.input_shape}, "
              + ", ".join(f"{name} {loader.num_samples}" for name, loader in splits.items()))
    problems = []
    if data.spec.task == "classification":
        table = Table(title="samples per class")
        table.add_column("class")
        for name in splits:
            table.add_column(name, justify="right")
        counts = {name: Counter(loader.y.tolist()) for name, loader in splits.items()}
        for c, cls in enumerate(data.spec.class_names):
            table.add_row(cls, *(str(counts[name][c]) for name in splits))
        out.print(table)
    train = {hashlib.sha256(x.cpu().numpy().tobytes()).digest() for x in splits["train"].x}
    leaks = {name: sum(hashlib.sha256(x.cpu().numpy().tobytes()).digest() in train for x in loader.x)
             for name, loader in splits.items() if name != "train"}
    for name, n in leaks.items():
        out.print(f"{name}: {n} sample(s) identical to a training sample")
        if n:
            problems.append(f"{n} {name} sample(s) identical to training samples (leakage)")
    show_summary(out, problems)
    return problems
