"""Small datasets the data tests generate: image folders, torchvision's on-disk formats, CSV files, plain text."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# Every Pillow mode an image folder may hold, with a file format that stores it.
MODES = {"L": "png", "RGB": "jpg", "RGBA": "png", "P": "gif", "CMYK": "jpg", "1": "bmp", "LA": "png",
         "I;16": "png", "YCbCr": "jpg"}


def photo(rng: np.random.Generator, color: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A noisy image of one dominant colour (so classes are learnable), in `mode`."""
    w, h = size
    pixels = (np.array(color) + rng.integers(-40, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    return img.convert(mode)


CLASS_COLORS = {"cat": (200, 60, 40), "dog": (40, 60, 200), "fox": (60, 200, 40)}


def image_folder(root: Path, per_class: int = 8, *, splits: tuple[str, ...] = ("train", "val"),
                 classes: tuple[str, ...] = ("cat", "dog"), modes: bool = False, seed: int = 0) -> Path:
    """root/<split>/<class>/*.{jpg,png,...} (or root/<class>/ when splits is empty): images of
    several sizes, and of every mode in MODES when `modes`."""
    rng = np.random.default_rng(seed)
    mode_list = list(MODES) if modes else ["RGB"]
    for split in splits or ("",):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                mode = mode_list[i % len(mode_list)]
                size = (24 + 8 * (i % 3), 20 + 6 * (i % 4))
                photo(rng, CLASS_COLORS[cls], size, mode).save(folder / f"{cls}{i}.{MODES.get(mode, 'jpg')}")
    return root


def corrupt_jpeg(path: Path, rng_seed: int = 1) -> Path:
    """A JPEG whose header is fine but whose pixel data stops halfway (a broken download)."""
    photo(np.random.default_rng(rng_seed), (128, 128, 128), (64, 48)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: a big-endian magic (0x08 = uint8, then the number of dimensions), the sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">i", 0x0800 + array.ndim) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_files(root: Path, folder: str = "MNIST", train: int = 60, test: int = 20) -> Path:
    """root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte with digit-like class patterns."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 2 * y: 2 * y + 6, 4:24] = 250  # a bar whose height says the class
        _idx(root / folder / "raw" / f"{split}-images-idx3-ubyte", images)
        _idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte", labels)
    return root


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_files(root: Path, per_batch: int = 20) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}: pickled dicts as CIFAR ships them."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    return root


def machines_csv(path: Path, rows: int = 300, seed: int = 0) -> Path:
    """Predictive maintenance: temperature, rpm, a machine model (categorical), some values missing,
    a rare `failure` class and a numeric `wear` to regress."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    temp = rng.normal(60, 10, rows)
    rpm = rng.normal(1500, 200, rows)
    model = rng.choice(["A", "B", "C"], rows)
    failure = ((temp > 72) | ((model == "C") & (rpm > 1700))).astype(int)
    wear = 0.05 * temp + 0.002 * rpm + (model == "B") * 1.5 + rng.normal(0, 0.1, rows)
    table = pd.DataFrame({"id": range(rows), "temp": temp, "rpm": rpm, "model": model, "failure": failure,
                          "wear": wear})
    table.loc[::13, "temp"] = np.nan
    table.loc[::17, "model"] = np.nan
    table.to_csv(path, index=False)
    return path


def repeated_rows(path: Path, unique: int = 60, copies: int = 4, task: str = "classification", seed: int = 0) -> Path:
    """Rows whose target follows no rule (a label or number drawn per row), each written `copies` times:
    only recalling a row seen in training answers for its copy in val."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(unique, 3)).round(3)
    target = rng.choice(["red", "green", "blue"], unique) if task == "classification" else rng.normal(50, 10, unique)
    table = pd.DataFrame(x, columns=["a", "b", "c"]).assign(target=target)
    table = table.loc[table.index.repeat(copies)].sample(frac=1, random_state=seed)
    table.to_csv(path, index=False)
    return path


SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the king", "a child"]
VERBS = ["sees", "likes", "finds", "sings to", "waits for", "runs from"]
OBJECTS = ["the moon", "a tree", "the sea", "a song", "the queen", "the rain"]


def sentences(path: Path, lines: int = 600, seed: int = 0) -> Path:
    """Plain text for a language model: sentences of a small grammar, one a line (24 distinct characters), whose
    words and order a tiny GPT learns in a few hundred steps."""
    rng = np.random.default_rng(seed)
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    path.write_text("".join(f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)}.\n" for _ in range(lines)), encoding="utf-8")
    return path
