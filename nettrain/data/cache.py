"""Decode once: every image of a folder decoded and resized a single time into one uint8 tensor file.

The file's name carries a key of everything that decides its contents (each file's relative path,
size and mtime, the image size and channels), so any change to the folder or the settings makes a
new cache and removes the stale one. It is written atomically: an interrupted caching pass leaves
no partial file. Files that could not be decoded are recorded in it, so later runs skip them
without opening them again.

Where: `data.cache_dir`, by default the user's cache dir (`~/.cache/nettrain/images`, $XDG_CACHE_HOME),
never the data's own folder: a read-only photo folder or a shared dataset must not be written to.
The file's name tells the data apart (a hash of its root, then the key of its contents).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from nettrain.data.transforms import BadImageError, decode
from nettrain.errors import invalid
from nettrain.files import WriteError, atomic_write_bytes
from nettrain.records.console import step_bar
from nettrain.runtime import available_cores

log = logging.getLogger("nettrain")

FORMAT = "nettrain-image-cache-v1"


def decode_each(files: Sequence[Path], image_size: int, channels: int, description: str
                ) -> Iterator[tuple[int, Tensor | BadImageError]]:
    """(index, uint8 image or the error) for every file, decoded on a thread per core (Pillow
    releases the GIL while decoding and resizing), with a progress bar on a terminal."""
    def one(path: Path) -> Tensor | BadImageError:
        try:
            return decode(path, image_size, channels)
        except BadImageError as e:
            return e

    with ThreadPoolExecutor(max_workers=available_cores()) as pool, step_bar(description, len(files)) as bar:
        for i, result in enumerate(pool.map(one, files)):
            yield i, result
            bar.advance()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nettrain" / "images"


# A cache is held in memory whole: at most this share of the machine's memory.
MEMORY_SHARE = 0.5


def check_fits(images: int, channels: int, image_size: int) -> None:
    """Refuse, in one line, a cache larger than MEMORY_SHARE of this machine's memory (before decoding)."""
    need = images * channels * image_size ** 2  # uint8
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > MEMORY_SHARE * memory:
        raise invalid("data.image_size", image_size, f"data.cache=true holds {images:,} images of {image_size} px in memory: "
                                                     f"{need / 1e9:.1f} GB, over half of this machine's {memory / 1e9:.0f} GB; "
                                                     f"lower data.image_size, or data.cache=false to decode them on the fly")


def _cache_file(cache_dir: Path, root: Path, name: str, files: Sequence[Path], image_size: int,
                channels: int) -> tuple[Path, str]:
    """The cache file for this exact file list and settings, and the prefix its stale versions share."""
    stats = []
    for path in files:
        st = path.stat()
        stats.append([str(path.relative_to(root)) if path.is_relative_to(root) else str(path), st.st_size, st.st_mtime_ns])
    key = hashlib.sha256(json.dumps([FORMAT, image_size, channels, stats]).encode()).hexdigest()[:20]
    where = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    prefix = f"{name}-{image_size}px-{channels}ch-{where}-"
    return cache_dir / f"{prefix}{key}.pt", prefix


def cached_images(files: Sequence[Path], *, root: Path, name: str, image_size: int, channels: int,
                  cache_dir: Path) -> tuple[Tensor, dict[int, str]]:
    """uint8 [N, C, S, S] images of `files` (zeros where unreadable) and {index: reason} of the
    unreadable ones, from the cache when it is current, else decoded now and cached."""
    path, prefix = _cache_file(cache_dir, root, name, files, image_size, channels)
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("format") == FORMAT and len(saved["images"]) == len(files):
                log.info("%s: %d images from the cache %s", name, len(files), path)
                return saved["images"], {int(k): v for k, v in saved["bad"].items()}
        except Exception as e:  # noqa: BLE001 - an unreadable cache is rebuilt, never trusted
            log.warning("rebuilding the image cache %s: %s", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
    images = torch.zeros(len(files), channels, image_size, image_size, dtype=torch.uint8)
    bad: dict[int, str] = {}
    log.info("%s: decoding %d images once into the cache (%d px)", name, len(files), image_size)
    for i, result in decode_each(files, image_size, channels, f"caching {name} images"):
        if isinstance(result, BadImageError):
            bad[i] = str(result)
        else:
            images[i] = result
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "images": images, "bad": {str(k): v for k, v in bad.items()}}, buffer)
    try:
        atomic_write_bytes(buffer.getvalue(), path)
    except WriteError as e:
        raise invalid("data.cache_dir", str(cache_dir), f"cannot write the image cache there ({e})") from None
    for stale in cache_dir.glob(f"{prefix}*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    log.info("%s: cached %d images (%d px, %d channel(s)) in %s", name, len(files), image_size, channels, path)
    return images, bad
