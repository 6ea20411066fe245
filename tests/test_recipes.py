"""The recipes (`+experiment=...`) compose and train on generated data of their kind, with the choices
they stand for; `early_stopping.monitor=auto` watches what matters for the target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import metrics, train
from datagen import image_folder, machines_csv
from nettrain.records.checkpoint import load_checkpoint

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=4"]


def digits(root):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("0", "1"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                a = np.zeros((28, 28), np.uint8)
                a[8:20, 10:18] = 255 if cls == "1" else rng.integers(0, 255)
                Image.fromarray(a).save(root / split / cls / f"{i}.png")
    return root


def test_mnist_recipe_keeps_glyphs_small_gray_and_unmirrored(tmp_path):
    run_dir = train(tmp_path, "+experiment=mnist", f"data.root={digits(tmp_path / 'digits')}", *SHORT)
    cfg = load_checkpoint(run_dir)["config"]
    assert (cfg["data"]["channels"], cfg["data"]["image_size"], cfg["data"]["augment"]) == (1, 28, "shift")
    assert cfg["trainer"]["tta"] is None and cfg["early_stopping"]["monitor"] == "val_accuracy"


@pytest.mark.parametrize("recipe, policy", [("cats_dogs", "crop"), ("cifar10", "crop"), ("cifar10_fast", "crop")])
def test_photo_recipes_crop_flip_and_average_the_mirror(tmp_path, recipe, policy):
    root = image_folder(tmp_path / "photos", per_class=4)
    extra = {"cifar10": ["data=imagefolder"], "cifar10_fast": ["data=imagefolder", "data.cache=true", "model.channels=[4,4,8,8]"],
             "cats_dogs": ["model.channels=[4,8]"]}[recipe]
    run_dir = train(tmp_path, f"+experiment={recipe}", f"data.root={root}", "data.image_size=16", *extra, *SHORT)
    cfg = load_checkpoint(run_dir)["config"]
    assert cfg["trainer"]["tta"] == "flip" and cfg["loss"]["label_smoothing"] > 0
    assert cfg["data"]["augment"] == policy and metrics(run_dir)["status"] == "completed"


def wine_like(path, rows=240):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4))
    quality = np.clip(np.round(6 + x[:, 0] + 0.5 * rng.normal(size=rows)), 4, 8).astype(int)
    pd.DataFrame(x, columns=["alcohol", "acidity", "sugar", "ph"]).assign(quality=quality).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("table, target, monitor", [
    ("wine", "quality", "val_accuracy"),      # classes
    ("machines", "failure", "val_f1"),        # an imbalanced binary target: its threshold is tuned
    ("machines", "wear", "val_loss"),         # a number
])
def test_tabular_recipe_watches_what_matters_for_the_target(tmp_path, table, target, monitor):
    if table == "wine":
        path, columns = wine_like(tmp_path / "wine.csv"), []
    else:
        path, columns = machines_csv(tmp_path / "machines.csv"), ["data.categorical=[model]", "data.drop=[id]"]
    run_dir = train(tmp_path, "+experiment=tabular", f"data.path={path}", f"data.target={target}", *columns,
                    "trainer.max_epochs=2", "model.hidden=[16]")
    m = metrics(run_dir)
    assert load_checkpoint(run_dir)["config"]["early_stopping"]["monitor"] == monitor
    assert monitor in m["history"][-1] and m["best"][monitor] == m["history"][m["best_epoch"] - 1][monitor]


def test_the_speed_recipe_trains_from_torchvisions_cifar_files_with_an_average_of_its_weights(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    from datagen import cifar10_files

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # generated files
    root = cifar10_files(tmp_path / "cifar", per_batch=20)
    run_dir = train(tmp_path, "+experiment=cifar10_fast", f"data.root={root}", "model.channels=[4,4,8,8]", *SHORT)
    ckpt = load_checkpoint(run_dir)
    assert ckpt["config"]["model"]["name"] == "resnet9" and ckpt["ema_updates"] == 2
    assert metrics(run_dir)["status"] == "completed"
