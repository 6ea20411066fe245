"""Image folders left at `auto` are read before training: channels, size, normalization and the
augmentation policy come from the training images, are logged, and travel in the checkpoint."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import metrics, run_in_process, train
from datagen import image_folder
from nettrain.data.augment import image_batch_transform
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.models.build import before_data
from nettrain.records.checkpoint import load_checkpoint

CONFIG = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs", "data", "imagefolder.yaml"))


def glyphs(root, size=28, per_class=6, mode="L"):
    """root/{train,val}/{ell,bar}: white strokes on black, like scanned digits (an L-shape is not its own mirror)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("ell", "bar"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                a = np.zeros((size, size), np.uint8)
                c = size // 2 + int(rng.integers(-2, 3))
                if cls == "ell":
                    a[size // 4:3 * size // 4, c - 8:c - 5] = 255  # the stem on the left ...
                    a[3 * size // 4 - 3:3 * size // 4, c - 8:c + 6] = 255  # ... the foot to the right
                else:
                    a[c - 2:c + 2, size // 4:3 * size // 4] = 255
                Image.fromarray(a).convert(mode).save(root / split / cls / f"{i}.png")
    return root


def build(root, **overrides):
    cfg = OmegaConf.merge(CONFIG, {"root": str(root), "batch_size": 4, "num_workers": 0, **overrides})
    return cfg, build_data(cfg, DataContext())


def test_small_grayscale_glyphs_stay_one_channel_at_their_size_without_mirroring(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nettrain")
    cfg, data = build(glyphs(tmp_path / "digits"))
    assert data.spec.input_shape == [1, 28, 28]
    assert (cfg.channels, cfg.image_size, cfg.augment) == (1, 28, "shift")
    # The normalization is the training split's own: these glyphs are mostly black.
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float64) / 255)
                          for p in sorted((tmp_path / "digits" / "train").rglob("*.png"))])
    assert cfg.mean == pytest.approx([images.mean().item()], abs=1e-4)
    assert cfg.std == pytest.approx([images.std(unbiased=False).item()], abs=1e-4)
    assert data.spec.preprocessing["mean"] == list(cfg.mean)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("data auto:"))
    assert "channels=1 (every image is grayscale)" in line and "image_size=28 (their size)" in line
    assert "augment=shift (small grayscale images" in line and "(of 12 training images)" in line


def test_the_glyph_policy_shifts_and_zooms_but_never_mirrors():
    ell = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    ell[:, :, 7:21, 6:9] = 255
    ell[:, :, 18:21, 6:20] = 255
    out = image_batch_transform([0.0], [1.0], "shift", seed=0)(ell, 0, 0)
    assert not torch.equal(out, ell.float() / 255)  # augmented ...
    mass_left = out[..., :14].sum(dim=(1, 2, 3))
    mass_right = out[..., 14:].sum(dim=(1, 2, 3))
    assert (mass_left > mass_right).all()  # ... and every stem is still on the left


@pytest.mark.parametrize("size, policy, expected_size", [(32, "crop", 32), (100, "standard", 64)])
def test_colour_photos_get_crops_and_flips_and_a_bounded_size(tmp_path, size, policy, expected_size):
    root = tmp_path / "photos"
    for split in ("train", "val"):
        for cls, colour in (("cat", (200, 60, 40)), ("dog", (40, 60, 200))):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (size + i, size), colour).save(root / split / cls / f"{i}.jpg")
    cfg, data = build(root)
    assert (cfg.channels, cfg.image_size, cfg.augment) == (3, expected_size, policy)
    assert data.spec.input_shape == [3, expected_size, expected_size]
    assert cfg.mean[0] > cfg.mean[1]  # red cats and blue dogs: a per-channel mean, not ImageNet's


def test_what_the_user_sets_is_kept(tmp_path):
    cfg, data = build(glyphs(tmp_path / "digits"), channels=3, image_size=20, augment="none",
                      mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert data.spec.input_shape == [3, 20, 20] and cfg.augment == "none"
    assert data.spec.preprocessing["mean"] == [0.5, 0.5, 0.5]


def test_a_mixed_folder_is_colour_and_uncached_statistics_come_from_a_sample(tmp_path):
    root = image_folder(tmp_path / "mixed", per_class=6, modes=True)
    cfg, data = build(root, cache=False)
    assert cfg.channels == 3 and len(cfg.mean) == 3 and all(0 < s for s in cfg.std)
    x, _ = next(iter(data.train.batches(0)))
    assert x.shape[1:] == (3, cfg.image_size, cfg.image_size)


def test_the_checkpoint_carries_the_choices_and_check_data_shows_them(tmp_path, capsys):
    root = glyphs(tmp_path / "digits")
    run_dir = train(tmp_path, "data=imagefolder", f"data.root={root}", "data.num_workers=0", "data.batch_size=4",
                    "model=cnn", "model.channels=[4]", "trainer.max_epochs=1")
    data = load_checkpoint(run_dir)["config"]["data"]
    assert (data["channels"], data["image_size"], data["augment"]) == (1, 28, "shift")
    assert isinstance(data["mean"], list) and isinstance(data["std"], list)
    # The user's own command stays as given in the run's record of it.
    assert "channels: auto" in (run_dir / ".hydra" / "config.yaml").read_text()
    capsys.readouterr()
    assert run_in_process("check-data", "data=imagefolder", f"data.root={root}") == 0
    out = capsys.readouterr().out
    assert "data auto: channels=1 (every image is grayscale)" in out and "augment=shift" in out


def test_weights_bring_their_own_preprocessing(tmp_path):
    """A fine-tuned checkpoint's inputs were prepared one way: new data left at auto is prepared the same way."""
    run_dir = train(tmp_path, "data=imagefolder", f"data.root={glyphs(tmp_path / 'digits')}", "data.num_workers=0",
                    "data.batch_size=4", "model=cnn", "model.channels=[4]", "trainer.max_epochs=1", name="first")
    trained = load_checkpoint(run_dir)["spec"]["preprocessing"]
    cfg = OmegaConf.create({"model": {"name": "cnn", "init_from": str(run_dir)},
                            "data": OmegaConf.merge(CONFIG, {"root": "elsewhere", "augment": "none"})})
    before_data(cfg)
    assert [cfg.data[k] for k in ("channels", "image_size", "mean", "std")] == [
        trained[k] for k in ("channels", "image_size", "mean", "std")]
    torch.save({}, tmp_path / "weights.pt")
    cfg = OmegaConf.create({"model": {"name": "resnet18", "pretrained": str(tmp_path / "weights.pt")},
                            "data": OmegaConf.merge(CONFIG, {"root": "elsewhere", "std": [0.3]})})
    before_data(cfg)
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406] and list(cfg.data.std) == [0.3]
    assert cfg.data.channels == "auto"


def test_auto_values_are_validated(tmp_path, capsys):
    code = run_in_process("train", "data=imagefolder", f"data.root={tmp_path}", "data.channels=2",
                          f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    assert code == 2 and "data.channels=2" in err and "allowed: auto, 1, 3" in err


def test_two_processes_choose_what_one_process_chooses(tmp_path):
    """Every rank reads the same training images, so data-parallel ranks normalize alike: the
    history equals one process's (augmentation off: ranks draw their own; an MLP: batch norm would
    see each rank's half batch)."""
    root = glyphs(tmp_path / "digits", per_class=8)
    args = ["data=imagefolder", f"data.root={root}", "data.num_workers=0", "data.augment=none", "model=mlp",
            "model.hidden=[16]", "model.dropout=0", "trainer.max_epochs=2"]
    one = train(tmp_path, *args, "data.batch_size=8", name="one")
    two = train(tmp_path, *args, "data.batch_size=4", "trainer.devices=2", name="two")
    keys = ("train_loss", "val_loss", "val_accuracy")
    first, second = metrics(one)["history"], metrics(two)["history"]
    assert [h[k] for h in second for k in keys] == pytest.approx([h[k] for h in first for k in keys], rel=1e-4)
    assert load_checkpoint(two)["spec"]["preprocessing"] == load_checkpoint(one)["spec"]["preprocessing"]
