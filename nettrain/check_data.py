"""`nettrain check-data data=...`: what is in a dataset and what is wrong with it, before training.

Image folders: images per class and split, class imbalance, image modes and sizes, unreadable
files (every image is fully decoded), and exact duplicates (same bytes) between train and val or
test, i.e. leakage. CSV files: each column's type, missing values and range, the target's balance,
the columns training would refuse, and data.table_checks' findings (row-id columns, columns that give
the target away, val rows copied from training rows). Other datasets: class balance and duplicate
samples across splits. The train/val split is the one training makes (same data.val_fraction and
trainer.seed).

`strict=true` exits 1 when there is leakage, an unreadable file or a column training would refuse
(or that table_checks flags).
It is a Hydra app on configs/check_data.yaml (configs/train.yaml plus `strict`) that writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nettrain.config import absolute, validate
from nettrain.errors import UserError

log = logging.getLogger("nettrain")

SHOW = 20  # files listed per problem; the rest are counted
IMBALANCE_WARNING = 3.0  # largest / smallest class


@dataclass
class ImageInfo:
    path: Path
    label: int
    digest: str = ""
    size: tuple[int, int] | None = None
    mode: str = ""
    error: str | None = None


def check_data_task(cfg: DictConfig) -> None:
    """Print the report for `cfg.data`; exit 1 under strict=true when it found problems."""
    try:
        validate(cfg)
        problems = _report(cfg, Console(soft_wrap=True))
    except UserError as e:
        log.error("nettrain: %s", e)
        raise SystemExit(e.exit_code) from None
    if problems and cfg.strict:
        log.error("nettrain: strict=true: %s", "; ".join(problems))
        raise SystemExit(1)


def _report(cfg: DictConfig, out: Console) -> list[str]:
    if cfg.data.name == "imagefolder":
        return image_report(cfg, out)
    if cfg.data.name == "csv":
        return csv_report(cfg, out)
    if cfg.data.name == "text":
        from nettrain.check_text import text_report

        return text_report(cfg, out)
    return tensor_report(cfg, out)


def _inspect(info: ImageInfo) -> ImageInfo:
    """Hash the file's bytes, read its size and mode, and decode every pixel."""
    from nettrain.data.transforms import BadImageError, open_file

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


def image_report(cfg: DictConfig, out: Console) -> list[str]:
    from nettrain.data.image_defaults import choose_shape
    from nettrain.data.imagefolder import find_images
    from nettrain.data.labels import split_indices
    from nettrain.runtime import available_cores

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
        _list(out, f"unreadable files: {len(unreadable)} ({action})",
              [f"{i.path}: {i.error}" for i in unreadable])
    leaks = _leaks(splits, class_names)
    if leaks:
        problems.append(f"{len(leaks)} val/test image(s) identical to training images (leakage)")
        _list(out, f"leakage: {len(leaks)} val/test image(s) have the same bytes as a training image", leaks)
    _summary(out, problems)
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


def csv_report(cfg: DictConfig, out: Console) -> list[str]:
    import pandas as pd

    from nettrain.data.table_checks import check_table, drop_setting
    from nettrain.data.tabular import choose_columns, detect_task, numeric_column, read_table, refused_id, split_rows

    path = absolute(cfg.data.path)
    categorical = set(cfg.data.get("categorical") or [])
    table = read_table(path, list(categorical))
    target = cfg.data.target
    features, _ = choose_columns(table, cfg.data, path)
    labelled = table[table[target].notna()]
    problems, findings = [], []
    if labelled.empty:
        problems.append(f"no row has a value in the target column {target!r}: nothing to train on")
    else:
        try:  # the checks training makes too, on the split it makes (same val_fraction and seed)
            task, _, targets, train_idx, val_idx = split_rows(labelled, cfg.data, cfg.trainer.seed, path)
            findings = check_table(labelled, cfg.data, features, task, targets, (train_idx, val_idx))
        except UserError as e:  # a target training refuses (one class, a class of one row)
            problems.append(str(e))
    refused = {f.columns[0] for f in findings if refused_id(labelled, f, list(categorical), path)}

    out.print(f"[bold]{path}[/]  {len(table)} rows, {len(table.columns)} columns")
    columns = Table(title="columns")
    for name in ("column", "role", "type", "missing", "distinct", "range / examples"):
        columns.add_column(name, justify="right" if name in ("missing", "distinct") else "left")
    for name in table.columns:
        col = table[name]
        role = "target" if name == target else "feature" if name in features else "unused"
        if name in categorical or not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            kind = "categorical" if name in categorical else "text"
            values = ", ".join(map(str, col.dropna().astype(str).value_counts().index[:3]))
            if name in refused:
                kind = "[red]text (row id)[/]"  # its finding says so: never "declare it categorical"
            elif role == "feature" and kind == "text":
                try:
                    numeric_column(col, name, path)
                    kind = "numeric"
                except UserError as e:
                    kind = "[red]text (undeclared)[/]"
                    problems.append(str(e))
        else:
            kind, values = "numeric", f"{col.min():.4g} .. {col.max():.4g}" if col.notna().any() else "-"
            if role != "unused":
                try:
                    numeric_column(col, name, path)
                except UserError as e:
                    kind = "[red]numeric (not finite)[/]"
                    problems.append(str(e))
        missing = int(col.isna().sum())
        columns.add_row(name, role, kind, f"{missing} ({missing / len(table):.0%})" if missing else "0",
                        str(col.nunique()), values)
    out.print(columns)

    y = labelled[target]
    if not y.empty and detect_task(y, cfg.data.task) == "regression":
        out.print(f"target {target!r}: regression, mean {y.mean():.4g}, std {y.std():.4g}, "
                  f"range {y.min():.4g} .. {y.max():.4g}")
    elif not y.empty:
        balance = Table(title=f"target {target!r}")
        balance.add_column("class")
        balance.add_column("rows", justify="right")
        balance.add_column("share", justify="right")
        counts = y.astype(str).value_counts()
        for value, n in counts.items():
            balance.add_row(str(value), str(n), f"{n / len(y):.1%}")
        out.print(balance)
        imbalance = counts.max() / counts.min()
        out.print(f"imbalance (largest / smallest class): {imbalance:.1f}x{weights_hint(cfg, imbalance)}")
    if table[target].isna().any():
        out.print(f"{int(table[target].isna().sum())} row(s) without a target are left out by training")
    duplicates = int(table.duplicated(subset=[*features, target]).sum())
    out.print(f"duplicate rows (same features and target): {duplicates}")

    for problem in problems:
        out.print(f"[red]problem:[/] {escape(problem)}")
    for finding in findings:
        out.print(f"[red]problem:[/] {escape(finding.message)}")
        for line in finding.details[:SHOW] if len(finding.details) > 1 else ():
            out.print(f"  {line}", markup=False)
    drop = [c for f in findings for c in f.columns]
    if len([f for f in findings if f.columns]) > 1 and not cfg.data.get("features"):
        out.print(f"every column named above left out: {escape(drop_setting(cfg.data, drop))}")
    problems += [f.message for f in findings]
    _summary(out, problems, listed=True)
    return problems


def weights_hint(cfg: DictConfig, imbalance: float) -> str:
    """"consider data.class_weights=balanced" after an imbalance that calls for it, unless it is set."""
    if imbalance < IMBALANCE_WARNING or cfg.data.get("class_weights") == "balanced":
        return ""
    return "  [yellow]consider data.class_weights=balanced[/]"


def tensor_report(cfg: DictConfig, out: Console) -> list[str]:
    """Any other dataset, as the loaders serve it: class balance per split, duplicates across splits."""
    from nettrain.data import DataContext, build_data

    data = build_data(cfg.data, DataContext(seed=cfg.trainer.seed))
    splits = {name: loader for name, loader in (("train", data.train), ("val", data.val), ("test", data.test))
              if loader is not None and hasattr(loader, "x")}
    out.print(f"[bold]data={cfg.data.name}[/]  input {data.spec.input_shape}, "
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
    _summary(out, problems)
    return problems


def per_class_table(title: str, classes: list[tuple[object, str]], counts: dict[str, Counter]) -> Table:
    """A row per class, a column per split: `classes` are (key in the counts, name) pairs."""
    table = Table(title=title)
    table.add_column("class")
    for split in counts:
        table.add_column(split, justify="right")
    for key, name in classes:
        table.add_row(name, *(str(counts[split][key]) for split in counts))
    return table


def _list(out: Console, title: str, lines: list[str]) -> None:
    out.print(f"[red]{title}[/]")
    for line in lines[:SHOW]:
        out.print(f"  {line}", markup=False)
    if len(lines) > SHOW:
        out.print(f"  ... and {len(lines) - SHOW} more")


def _summary(out: Console, problems: list[str], listed: bool = False) -> None:
    """The last line; `listed`: each problem was printed in full above, so it is counted, not repeated."""
    if problems and listed:
        out.print(f"[bold red]{len(problems)} problem(s)[/] (above)")
    elif problems:
        out.print(f"[bold red]problems:[/] {escape('; '.join(problems))}")
    else:
        out.print("[bold green]no problems found[/]")

