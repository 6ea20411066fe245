"""From an image file to the tensor a model expects: the one path shared by training, eval and predict.

Two steps, kept apart so the expensive one can be cached:
1. `decode` (per file, on the CPU): open any image (any mode: 1, L, P, RGB, RGBA, LA, CMYK, YCbCr,
   16-bit I;16/I, float F), apply its EXIF rotation, convert to `channels`, resize the shorter side
   to `image_size` and crop the centre square -> a uint8 [C, S, S] tensor. This is what the image
   cache stores and what the image-folder dataset returns.
2. `normalize` (per batch, on any device): scale to [0, 1], subtract mean, divide by std.

`load_image` is both steps for one file, so `nettrain predict` computes exactly what validation does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from nettrain.errors import UserError, invalid

# Extensions of image files, for finding the images among other files (e.g. `nettrain predict input=DIR`).
# Training folders need none: every non-hidden file of a class folder is tried, and reported if unreadable.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                              ".pgm", ".pbm", ".jfif"})
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # integer modes wider than 8 bits


# The most pixels an image may have: Pillow's own warning threshold (89 MP; a 10,000 x 10,000 scan is 100 MP
# and takes over a GB to decode). Larger images are unreadable files, named in one line, found from the header;
# Pillow's own warning (a wall of text, once per look at the file) is then never needed.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImageError(UserError):
    """A file that is not a readable image; names the file. Image folders may skip these."""


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def open_file(path: str | Path) -> Image.Image:
    """`Image.open` (the header only: no pixel decoded), or a BadImageError naming the file: unreadable, or
    larger than MAX_PIXELS. Every look at an image file goes through here."""
    try:
        img = Image.open(path)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot read image {path}: {_reason(e)}") from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise BadImageError(f"cannot read image {path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over "
                            f"the {MAX_PIXELS / 1e6:.0f} nettrain decodes; downscale it") from None
    return img


def open_image(source: str | Path | Image.Image, draft_size: int | None = None) -> Image.Image:
    """The fully decoded, EXIF-rotated image (corruption or truncation is found here, not mid-training).
    With `draft_size`, a JPEG decodes at a reduced scale that still keeps both sides >= draft_size:
    several times faster for photos much larger than the model's input."""
    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source)
    with open_file(source) as img:
        try:
            if draft_size:
                img.draft(None, (draft_size, draft_size))
            img.load()
            return ImageOps.exif_transpose(img)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise BadImageError(f"cannot read image {source}: {_reason(e)}") from None


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode as 'L' (channels=1) or 'RGB' (channels=3)."""
    if img.mode in _SIXTEEN_BIT:
        # Pillow clips 16-bit values at 255 when converting; scale the 16-bit range down instead.
        # Mode I (32-bit) holds 16-bit PNGs in older Pillows, or plain 8-bit values: only the former is scaled.
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "I" or values.max(initial=0) > 255:
            values = values / 257.0
        img = Image.fromarray(values.clip(0, 255).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white (what a viewer shows), not whatever colour hides under them.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def decode(source: str | Path | Image.Image, image_size: int, channels: int) -> Tensor:
    """One image as a uint8 [channels, image_size, image_size] tensor: EXIF-rotated, converted,
    shorter side resized to image_size, centre-cropped (the aspect ratio is never distorted)."""
    img = to_channels(open_image(source, draft_size=image_size), channels)
    img = ImageOps.fit(img, (image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8).reshape(image_size, image_size, channels)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def channel_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std for `channels`: one value is used for every channel, and RGB
    statistics are averaged for a grayscale model (so data.channels=1 works with the defaults)."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]

    def fit(values: list[float], key: str) -> list[float]:
        if len(values) == channels:
            return values
        if len(values) == 1:
            return values * channels
        if len(values) == 3 and channels == 1:
            return [sum(values) / 3]
        raise invalid(key, values, f"give one value per channel (data.channels={channels}) or a single value")

    mean, std = fit(mean, "data.mean"), fit(std, "data.std")
    if any(s <= 0 for s in std):
        raise invalid("data.std", std, "every value must be > 0")
    return mean, std


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (0..255) or float (0..1 scale after /255) images [..., C, H, W] -> standardized float32."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def load_image(source: str | Path | Image.Image, preprocessing: dict[str, Any]) -> Tensor:
    """The float [C, H, W] input a model trained with `preprocessing` (a checkpoint's
    spec.preprocessing, kind "image") expects for this image file: exactly what validation computed."""
    if preprocessing.get("kind") != "image":
        raise UserError(f"this model was trained on {preprocessing.get('kind', 'unknown')} data, not images")
    x = decode(source, int(preprocessing["image_size"]), int(preprocessing["channels"]))
    return normalize(x, preprocessing["mean"], preprocessing["std"])
