"""`data=imagefolder`: layouts, any image mode, bad files, the decode-once cache, and the two loaders
giving the same batches."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import metrics, run_in_process, train
from datagen import MODES, corrupt_jpeg, image_folder, photo
from nettrain.data.augment import image_batch_transform
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.data.transforms import load_image
from nettrain.errors import UserError
from nettrain.records.checkpoint import load_checkpoint

CONFIG = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs", "data", "imagefolder.yaml"))


def data_cfg(root, **overrides):
    return OmegaConf.merge(CONFIG, {"root": str(root), "image_size": 16, "batch_size": 4, "num_workers": 0,
                                    **overrides})


PRE = {"kind": "image", "image_size": 16, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.mark.parametrize("channels", [1, 3])
def test_any_image_mode_and_size_becomes_the_models_input(tmp_path, channels):
    rng = np.random.default_rng(0)
    for i, (mode, ext) in enumerate(MODES.items()):
        path = tmp_path / f"img{i}.{ext}"
        photo(rng, (100, 150, 200), (30 + 7 * i, 20 + 3 * i), mode).save(path)
        x = load_image(path, PRE | {"channels": channels, "mean": [0.5] * channels, "std": [0.25] * channels})
        assert x.shape == (channels, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all(), mode


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(tmp_path / "mid.png")  # 50 % grey in 16 bits
    x = load_image(tmp_path / "mid.png", PRE | {"channels": 1, "mean": [0.0], "std": [1.0]})
    assert x.mean().item() == pytest.approx(128 / 255, abs=0.01)


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    x = load_image(tmp_path / "clear.png", PRE | {"mean": [0.0] * 3, "std": [1.0] * 3})
    assert torch.allclose(x, torch.ones_like(x))


def test_an_unreadable_file_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    for path in (tmp_path / "notes.txt", corrupt_jpeg(tmp_path / "broken.jpg")):
        with pytest.raises(UserError, match=str(path)) as e:
            load_image(path, PRE)
        assert "\n" not in str(e.value)


def test_cached_and_streamed_loaders_give_the_same_batches(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=6, modes=True)
    ctx = DataContext(seed=3)
    streamed = build_data(data_cfg(root, cache=False), ctx)
    cached = build_data(data_cfg(root, cache=True), ctx)
    assert type(streamed.train).__name__ == "StreamLoader" and type(cached.train).__name__ == "TensorLoader"
    for epoch in (0, 1):
        pairs = list(zip(streamed.train.batches(epoch), cached.train.batches(epoch), strict=True))
        assert pairs and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)
    val = list(zip(streamed.val.batches(0), cached.val.batches(0), strict=True))
    assert all(torch.equal(a[0], b[0]) for a, b in val)
    # An interrupted epoch resumed at batch 1 replays exactly the batches it had left.
    assert torch.equal(next(cached.train.batches(1, start=1))[0], pairs[1][0][0])


def test_predict_preprocessing_is_exactly_validation(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=4, modes=True)
    data = build_data(data_cfg(root, cache=True), DataContext(seed=0))
    x, _ = next(data.val.batches(0))
    first_val_file = sorted((root / "val" / "cat").iterdir())[0]
    assert torch.equal(load_image(first_val_file, data.spec.preprocessing), x[0])
    assert data.spec.class_names == ["cat", "dog"] and data.spec.input_shape == [3, 16, 16]


def test_augmentation_is_seeded_per_batch_and_absent_at_validation():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    augment = image_batch_transform([0.5] * 3, [0.25] * 3, "standard", seed=1)
    plain = image_batch_transform([0.5] * 3, [0.25] * 3, "none")
    assert torch.equal(augment(x, 2, 5), augment(x, 2, 5))
    assert not torch.equal(augment(x, 2, 5), augment(x, 3, 5))
    assert torch.equal(plain(x, 0, 0), (x.float() / 255 - 0.5) / 0.25)
    for kind in ("crop", "flip"):
        out = image_batch_transform([0.5] * 3, [0.25] * 3, kind, seed=1)(x, 0, 0)
        assert out.shape == x.shape and not torch.equal(out, plain(x, 0, 0))


def test_a_single_folder_is_split_by_seeded_stratified_val_fraction(tmp_path):
    root = image_folder(tmp_path / "flat", per_class=10, splits=(), classes=("cat", "dog", "fox"))
    cfg = data_cfg(root, val_fraction=0.3, cache=True)
    data = build_data(cfg, DataContext(seed=0))
    assert data.spec.class_names == ["cat", "dog", "fox"]
    assert torch.bincount(data.val.y).tolist() == [3, 3, 3] and torch.bincount(data.train.y).tolist() == [7, 7, 7]
    again = build_data(cfg, DataContext(seed=0))
    other = build_data(cfg, DataContext(seed=1))
    assert torch.equal(again.val.x, data.val.x) and not torch.equal(other.val.x, data.val.x)


@pytest.mark.parametrize("cache", [False, True])
def test_bad_files_are_skipped_counted_and_named(tmp_path, caplog, cache):
    root = image_folder(tmp_path / "pets", per_class=4)
    (root / "train" / "cat" / "notes.txt").write_text("a stray text file")
    broken = corrupt_jpeg(root / "train" / "dog" / "broken.jpg")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, not counted
    with caplog.at_level(logging.WARNING, logger="nettrain"):
        data = build_data(data_cfg(root, cache=cache), DataContext())
        batches = list(data.train.batches(0))
    text = caplog.text
    assert "notes.txt" in text and "DS_Store" not in text
    assert "broken.jpg" in text  # found up front when caching, or when first decoded while streaming
    if cache:
        assert "skipped 2 unreadable file(s)" in text and data.train.num_samples == 8
    assert sum(len(y) for _, y in batches) == 8 and str(broken) in text


@pytest.mark.parametrize("cache", [False, True])
def test_on_bad_file_error_stops_before_training_naming_the_file(tmp_path, cache):
    root = image_folder(tmp_path / "pets", per_class=3)
    broken = corrupt_jpeg(root / "val" / "dog" / "broken.jpg")
    with pytest.raises(UserError, match=f"{broken}.*data.on_bad_file=skip"):
        build_data(data_cfg(root, cache=cache, on_bad_file="error"), DataContext())


def test_folders_without_two_classes_or_with_an_empty_class_are_errors(tmp_path):
    one = image_folder(tmp_path / "one", per_class=2, classes=("cat",), splits=())
    with pytest.raises(UserError, match="only 1 class folder"):
        build_data(data_cfg(one), DataContext())
    empty = image_folder(tmp_path / "empty", per_class=2)
    (empty / "train" / "fox").mkdir()
    with pytest.raises(UserError, match="class folder .*fox has no images"):
        build_data(data_cfg(empty), DataContext())
    unknown = image_folder(tmp_path / "unknown", per_class=2)
    image_folder(unknown, per_class=1, splits=("val",), classes=("fox",))
    with pytest.raises(UserError, match="fox is not one of the classes"):
        build_data(data_cfg(unknown), DataContext())
    only_text = image_folder(tmp_path / "text", per_class=2, splits=())
    for f in (only_text / "dog").iterdir():
        f.unlink()
    (only_text / "dog" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="class 'dog' has no readable images"):
        build_data(data_cfg(only_text, val_fraction=0.5), DataContext())


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, caplog):
    root = image_folder(tmp_path / "pets", per_class=3)
    cfg = data_cfg(root, cache=True, cache_dir=str(tmp_path / "cache"))
    build_data(cfg, DataContext())
    first = sorted((tmp_path / "cache").iterdir())
    assert len(first) == 2  # train and val
    with caplog.at_level(logging.INFO, logger="nettrain"):
        build_data(cfg, DataContext())
    assert "images from the cache" in caplog.text and sorted((tmp_path / "cache").iterdir()) == first
    photo(np.random.default_rng(5), (0, 0, 0), (30, 30)).save(root / "train" / "cat" / "cat0.jpg")
    data = build_data(cfg, DataContext())
    now = sorted((tmp_path / "cache").iterdir())
    assert len(now) == 2 and now != first  # train's cache rebuilt, the stale one removed
    assert data.train.x[data.train.y == 0].float().mean((1, 2, 3)).min() < 30  # the new black image is in it
    assert not (root / ".nettrain_cache").exists()


def test_oxford_pets_missing_says_how_to_get_it(tmp_path):
    cfg = data_cfg(tmp_path, source="oxford_pets")
    with pytest.raises(UserError, match="data.download=true.*images.tar.gz and annotations.tar.gz") as e:
        build_data(cfg, DataContext())
    assert str(tmp_path / "oxford-iiit-pet") in str(e.value)


def test_oxford_pets_layout_trains_as_cat_vs_dog(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    rng = np.random.default_rng(0)
    lines = {"trainval": [], "test": []}
    for breed, label, species in (("Abyssinian", 1, 1), ("beagle", 2, 2)):
        for i in range(1, 9):
            photo(rng, (200, 60, 40) if species == 1 else (40, 60, 200), (40, 30)).save(base / "images" / f"{breed}_{i}.jpg")
            lines["test" if i > 6 else "trainval"].append(f"{breed}_{i} {label} {species} 1")
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    data = build_data(data_cfg(tmp_path, source="oxford_pets", val_fraction=0.25, cache=True), DataContext())
    assert data.spec.class_names == ["cat", "dog"]
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (9, 3, 4)
    assert torch.bincount(data.test.y).tolist() == [2, 2]


def test_cats_dogs_experiment_trains_on_a_generated_folder(tmp_path):
    root = image_folder(tmp_path / "cats_dogs", per_class=12, modes=True)
    run_dir = train(tmp_path, "+experiment=cats_dogs", f"data.root={root}", "data.image_size=16",
                    "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    m = metrics(run_dir)
    assert m["status"] == "completed" and m["epochs"] == 1
    ckpt = load_checkpoint(run_dir)
    assert ckpt["spec"]["class_names"] == ["cat", "dog"]
    assert ckpt["spec"]["preprocessing"] | {"mean": None, "std": None} == {
        "kind": "image", "image_size": 16, "channels": 3, "mean": None, "std": None}
    assert list((tmp_path / "xdg-cache" / "nettrain" / "images").glob("*.pt"))  # the experiment caches decoded images


def test_the_cache_never_writes_into_the_data_folder(tmp_path):
    root = image_folder(tmp_path / "shared_photos", per_class=4)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    build_data(data_cfg(root, cache=True), DataContext())
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # read-only or shared: untouched
    assert len(list((tmp_path / "xdg-cache" / "nettrain" / "images").glob("*.pt"))) == 2  # train and val


def test_images_too_large_to_decode_are_bad_files_named_in_one_line(tmp_path, capfd, monkeypatch):
    from nettrain.data import transforms

    root = image_folder(tmp_path / "pets", per_class=4)
    Image.new("L", (2000, 1000)).save(root / "train" / "cat" / "scan.png")
    # As a 10,000 x 10,000 scan (1.6 GB to decode) is to the real limit, Pillow's 89 MP.
    monkeypatch.setattr(transforms, "MAX_PIXELS", 1_000_000)
    data = build_data(data_cfg(root), DataContext())
    assert data.train.num_samples + data.val.num_samples == 16  # the scan is left out, with its reason
    with pytest.raises(UserError, match="scan.png: 2000x1000 is 2 megapixels, over the 1 nettrain decodes"):
        build_data(data_cfg(root, on_bad_file="error"), DataContext())
    assert "DecompressionBomb" not in capfd.readouterr().err


def test_image_sizes_that_cannot_fit_are_one_line(tmp_path, capsys, monkeypatch):
    from nettrain.data import cache

    root = image_folder(tmp_path / "pets", per_class=2)
    assert run_in_process("train", "data=imagefolder", f"data.root={root}", "data.image_size=100000") == 2
    assert "invalid data.image_size=100000: must be auto or an integer in [4, 2048]" in capsys.readouterr().err
    monkeypatch.setattr(cache, "MEMORY_SHARE", 1e-9)  # this machine, as if its memory were a few bytes
    assert run_in_process("train", "data=imagefolder", f"data.root={root}", "data.image_size=64", "data.cache=true",
                          f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.cache=true holds 8 images of 64 px in memory" in err[0]
    assert not (tmp_path / "run").exists()


def test_tiny_images_say_they_are_upscaled(tmp_path, caplog):
    root = image_folder(tmp_path / "dots", per_class=4, splits=())
    for f in root.rglob("*.jpg"):
        Image.new("RGB", (1, 1), (200, 0, 0) if "cat" in f.name else (0, 0, 200)).save(f)
    with caplog.at_level(logging.INFO, logger="nettrain"):
        build_data(data_cfg(root, val_fraction=0.5, image_size="auto"), DataContext())
    assert "image_size=4 (images are 1 px, upscaled to the smallest size nettrain takes)" in caplog.text


def test_a_bad_folder_is_exit_2_and_leaves_no_run_dir(tmp_path, capsys):
    root = image_folder(tmp_path / "one", per_class=2, classes=("cat",))
    code = run_in_process("train", "data=imagefolder", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "run").exists()
    assert any("only 1 class folder" in line for line in err)
