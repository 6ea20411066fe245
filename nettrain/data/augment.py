"""Image augmentation and normalization for whole batches, on whatever device the batch is on.

`image_batch_transform` returns the loaders' per-batch transform: uint8 images in, normalized float
images out, augmented at training time. Every sample's crop and flip are drawn from a generator
seeded by (seed, rank, epoch, batch index), so a batch is the same whichever loader produced it
and a resumed run replays exactly. One `grid_sample` call crops, resizes and flips the whole batch:
on a GPU the data never leaves the device.

augment:
  standard  random resized crop (area 25-100 %, aspect 3/4-4/3) + horizontal flip
  crop      random shift of up to 4 px with zero padding + horizontal flip (the CIFAR recipe)
  shift     random shift of up to 1/14 of the side (2 px at 28 px) and +-10 % scale, no flip: digits,
            letters and other glyphs, which a mirror or a heavy crop would turn into another class
  flip      horizontal flip
  none      nothing
(`augment=auto` is resolved from the images before training: `nettrain.data.image_defaults`.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nettrain.data.loaders import BatchTransform
from nettrain.data.transforms import normalize
from nettrain.runtime import to_device

AUGMENTS = ("standard", "crop", "shift", "flip", "none")
CROP_AREA = (0.25, 1.0)     # torchvision's default 0.08 is too aggressive for small images and short runs
CROP_RATIO = (3 / 4, 4 / 3)
SHIFT_PIXELS = 4
GLYPH_SHIFT = 1 / 14     # of the side: 2 px on a 28 px digit
GLYPH_SCALE = 0.1


def batch_generator(seed: int, rank: int, epoch: int, batch: int) -> torch.Generator:
    """A CPU generator for one batch's random draws (well mixed, so nearby keys are independent)."""
    state = np.random.SeedSequence([seed, rank, epoch, batch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _scale_shift(x: Tensor, scale_x: Tensor, scale_y: Tensor, shift_x: Tensor, shift_y: Tensor, padding: str) -> Tensor:
    """Resample every image of x [N, C, H, W] at (scale * u + shift) per axis, u being the output
    pixel centres in [-1, 1] (a negative scale mirrors). The map is axis-aligned, so its grid is
    built from one row and one column per image: `affine_grid`'s general 2x3 maps cost 10x more on the CPU."""
    n, _, height, width = x.shape
    # The per-sample draws (made on the CPU, seeded) cross to x's device in one copy.
    draws = to_device(x.device, torch.stack([scale_x, scale_y, shift_x, shift_y], 1))
    scale_x, scale_y, shift_x, shift_y = draws.to(x.dtype).unbind(1)

    def axis(size: int, scale: Tensor, shift: Tensor) -> Tensor:
        centres = torch.arange(size, device=x.device, dtype=x.dtype).mul_(2).add_(1).div_(size).sub_(1)
        return scale.view(n, 1) * centres + shift.view(n, 1)

    gx = axis(width, scale_x, shift_x).view(n, 1, width, 1).expand(n, height, width, 1)
    gy = axis(height, scale_y, shift_y).view(n, height, 1, 1).expand(n, height, width, 1)
    return F.grid_sample(x, torch.cat([gx, gy], -1), mode="bilinear", padding_mode=padding, align_corners=False)


def random_resized_crop_flip(x: Tensor, g: torch.Generator) -> Tensor:
    """Per sample: a crop of random area and aspect at a random place, scaled back to full size,
    mirrored with probability 1/2."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*CROP_AREA, generator=g)
    ratio = torch.empty(n).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=g).exp()
    w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # fractions of the side
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return _scale_shift(x, w * flip, h, cx, cy, padding="border")


def random_shift_flip(x: Tensor, g: torch.Generator) -> Tensor:
    """Per sample: a whole-pixel shift of up to SHIFT_PIXELS in each direction (zeros come in at the
    border, as with pad-and-crop), mirrored with probability 1/2."""
    n, _, height, width = x.shape
    dx = torch.randint(-SHIFT_PIXELS, SHIFT_PIXELS + 1, (n,), generator=g).float() * 2 / width
    dy = torch.randint(-SHIFT_PIXELS, SHIFT_PIXELS + 1, (n,), generator=g).float() * 2 / height
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return _scale_shift(x, flip, torch.ones(n), dx, dy, padding="zeros")


def random_shift_scale(x: Tensor, g: torch.Generator) -> Tensor:
    """Per sample: a whole-pixel shift of up to GLYPH_SHIFT of the side and a zoom of +-GLYPH_SCALE,
    never mirrored; the border pixels (a glyph's background) fill what comes in."""
    n, _, height, width = x.shape
    most = max(1, round(GLYPH_SHIFT * min(height, width)))
    dx = torch.randint(-most, most + 1, (n,), generator=g).float() * 2 / width
    dy = torch.randint(-most, most + 1, (n,), generator=g).float() * 2 / height
    scale = torch.empty(n).uniform_(1 - GLYPH_SCALE, 1 + GLYPH_SCALE, generator=g)
    return _scale_shift(x, scale, scale, dx, dy, padding="border")


def random_flip(x: Tensor, g: torch.Generator) -> Tensor:
    mirrored = to_device(x.device, torch.rand(x.shape[0], generator=g) < 0.5).view(-1, 1, 1, 1)
    return torch.where(mirrored, x.flip(-1), x)


_AUGMENT_FNS = {"standard": random_resized_crop_flip, "crop": random_shift_flip, "shift": random_shift_scale,
                "flip": random_flip}


def image_batch_transform(mean: Sequence[float], std: Sequence[float], augment: str = "none", *,
                          seed: int = 0, rank: int = 0) -> BatchTransform:
    """uint8 [N, C, H, W] -> augmented (unless augment='none') and normalized float32, on x's device."""
    augment_fn = _AUGMENT_FNS.get(augment)
    mean, std = list(mean), list(std)

    def transform(x: Tensor, epoch: int, batch: int) -> Tensor:
        x = x.float().div_(255.0)
        if augment_fn is not None:
            x = augment_fn(x, batch_generator(seed, rank, epoch, batch))
        return normalize(x, mean, std)

    return transform
