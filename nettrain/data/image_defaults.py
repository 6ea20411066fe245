"""Image settings read from the data: each of `data.channels`, `data.image_size`, `data.mean`/`data.std`
and `data.augment` left at `auto` is chosen from the training images before training, and the
choices are logged in one line with their reasons:

  channels    1 when every image is grayscale (modes 1, L, LA, I;16, I, F), else 3
  image_size  their median shorter side when that is at most MAX_AUTO_SIZE (28 px digits stay
              28 px, 32 px CIFAR photos 32 px), else MAX_AUTO_SIZE: larger inputs cost
              quadratically more compute on every epoch, so that is the user's call
  mean, std   per channel, over the training split's pixels (every image when cached, else an
              evenly spaced sample of STATS_SAMPLE); a pretrained model sets ImageNet's first
              (`models.before_data`), a fine-tuned checkpoint its own
  augment     auto_augment: shifts without mirroring for small grayscale images (digits and
              letters: a mirrored 2 or a heavily cropped 7 is another class), 4 px shifts and
              flips for small colour photos (the CIFAR recipe), random resized crops and flips above

The resolved values are written into the data config, so the checkpoint (and a resumed run) carries
what was chosen, not `auto`.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from nettrain.data.cache import decode_each
from nettrain.data.transforms import BadImageError, open_file
from nettrain.errors import UserError

log = logging.getLogger("nettrain")

AUTO = "auto"
MAX_AUTO_SIZE = 64
MIN_SIZE = 4           # the smallest data.image_size (config's rule): a 3x3 kernel needs something to slide over
SMALL = 64            # at most this many px: "small" images for the augmentation policy
SURVEY_SAMPLE = 2000  # image headers read to decide channels and size
STATS_SAMPLE = 512    # images decoded for the normalization when they are not cached
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class Survey:
    """What the images' headers say (no pixel decoded): their modes and shorter sides."""

    modes: Counter
    short_sides: list[int]

    @property
    def grayscale(self) -> bool:
        return bool(self.modes) and all(mode in GRAYSCALE_MODES for mode in self.modes)


def _spaced(items: Sequence, limit: int) -> list:
    """Up to `limit` items evenly spaced over `items` (every class of a sorted folder is seen; deterministic)."""
    if len(items) <= limit:
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def survey(files: Sequence[Path]) -> Survey:
    modes: Counter = Counter()
    sides = []
    for path in _spaced(files, SURVEY_SAMPLE):
        try:
            with open_file(path) as img:
                modes[img.mode] += 1
                sides.append(min(img.size))
        except BadImageError:
            continue  # unreadable files are screened (and reported) by the builder
    return Survey(modes, sides)


def auto_augment(channels: int, native_size: int) -> tuple[str, str]:
    """The augmentation policy for images of this kind (by their own size, not the size they are
    resized to: a photo shrunk to 32 px is still a photo), and why."""
    if native_size <= SMALL and channels == 1:
        return "shift", "small grayscale images (glyphs): small shifts and zooms, no mirroring"
    if native_size <= SMALL:
        return "crop", "small colour photos: 4 px shifts and horizontal flips"
    return "standard", "photos: random resized crops and horizontal flips"


def choose_shape(cfg: DictConfig, files: Sequence[Path]) -> list[str]:
    """Resolve `channels`, `image_size` and `augment` of the data config `cfg` from the images'
    headers (in place); returns what was chosen and why, for the log."""
    wanted = [key for key in ("channels", "image_size", "augment") if cfg.get(key) == AUTO]
    if not wanted:
        return []
    found = survey(files)
    median = int(statistics.median(found.short_sides)) if found.short_sides else MAX_AUTO_SIZE
    chosen = []
    if "channels" in wanted:
        cfg.channels = 1 if found.grayscale else 3
        chosen.append(f"channels={cfg.channels} ({'every image is grayscale' if found.grayscale else 'colour images'})")
    if "image_size" in wanted:
        cfg.image_size = max(min(median, MAX_AUTO_SIZE), MIN_SIZE)
        why = ("their size" if MIN_SIZE <= median <= MAX_AUTO_SIZE else
               f"images are {median} px: larger costs more, set data.image_size" if median > MAX_AUTO_SIZE else
               f"images are {median} px, upscaled to the smallest size nettrain takes")
        chosen.append(f"image_size={cfg.image_size} ({why})")
    if "augment" in wanted:
        cfg.augment, why = auto_augment(cfg.channels, median)
        chosen.append(f"augment={cfg.augment} ({why})")
    return chosen


def channel_moments(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images [N, C, H, W], scaled to [0, 1] (summed in float64
    chunks: no float copy of the whole set)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(1024):
        x = chunk.to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / max(n, 1)
    std = (squares / max(n, 1) - mean.square()).clamp(min=0).sqrt()
    # A constant channel (a blank set) has std 0: normalizing by it would divide by zero.
    return [round(m, 4) for m in mean.tolist()], [round(max(s, 1e-3), 4) for s in std.tolist()]


def choose_normalization(cfg: DictConfig, files: Sequence[Path], images: Tensor | None) -> list[str]:
    """Resolve `mean` and `std` (in place) from the training images: `images` when cached, else a
    decoded sample of `files`."""
    if cfg.get("mean") != AUTO and cfg.get("std") != AUTO:
        return []
    if images is None:
        sample = _spaced(files, STATS_SAMPLE)
        decoded = [x for _, x in decode_each(sample, cfg.image_size, cfg.channels, "normalization statistics")
                   if isinstance(x, Tensor)]
        images = torch.stack(decoded) if decoded else torch.zeros(1, cfg.channels, 1, 1, dtype=torch.uint8)
        where = f"{len(decoded)} training images"
    else:
        where = f"all {len(images)} training images"
    mean, std = channel_moments(images)
    if cfg.get("mean") == AUTO:
        cfg.mean = mean
    if cfg.get("std") == AUTO:
        cfg.std = std
    return [f"mean={list(cfg.mean)} std={list(cfg.std)} (of {where})"]


def report(chosen: list[str]) -> None:
    if chosen:
        log.info("data auto: %s", "; ".join(chosen))


def adopt(cfg: DictConfig, values: dict, source: str) -> None:
    """Set the data config's `auto` keys among `values` (a pretrained model's normalization, a
    fine-tuned checkpoint's preprocessing): a model that learned on inputs prepared one way wants
    its new data prepared the same way. Keys the user set are left as they are."""
    taken = {key: value for key, value in values.items() if cfg.get(key) == AUTO}
    for key, value in taken.items():
        cfg[key] = value
    if taken:
        log.info("data auto: %s (%s)", " ".join(f"{k}={v}" for k, v in taken.items()), source)


def require(cfg: DictConfig, trained: dict) -> None:
    """Prepare new images as a trained model's were (`trained`, its preprocessing: channels, image_size, mean,
    std): the data config's `auto` keys take its values; a key set to another value does not fit the model."""
    for key in ("channels", "image_size", "mean", "std"):
        value = cfg.get(key)
        given = list(value) if OmegaConf.is_list(value) else value
        if given not in (AUTO, None) and given != trained[key]:
            raise UserError(f"invalid data.{key}={given}: the model was trained on {key}={trained[key]}, and new "
                            f"images are prepared as its were (leave data.{key} out)")
        cfg[key] = trained[key]
