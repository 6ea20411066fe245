"""`data=mnist|fashion_mnist|cifar10` from torchvision's on-disk formats (generated here, tiny), and
the in-memory loader against torch's DataLoader."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from conftest import metrics, run_in_process, train
from datagen import CIFAR_CLASSES, cifar10_files, mnist_files
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.data.loaders import StreamLoader, TensorLoader
from nettrain.errors import UserError


def data_cfg(name, root, **overrides):
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "data", f"{name}.yaml")
    return OmegaConf.merge(OmegaConf.load(path), {"root": str(root), "val_fraction": 0.2, **overrides})


@pytest.fixture
def cifar_files_pass_torchvision_checksums(monkeypatch):
    """torchvision checks CIFAR's files against the official checksums; generated ones can't match."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.mark.parametrize("name, folder, mean", [("mnist", "MNIST", 0.1307), ("fashion_mnist", "FashionMNIST", 0.2860)])
def test_mnist_formats_load_whole_with_conventional_normalization(tmp_path, name, folder, mean):
    root = mnist_files(tmp_path, folder)
    data = build_data(data_cfg(name, root), DataContext(seed=0))
    assert isinstance(data.train, TensorLoader) and data.train.x.dtype == torch.uint8
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (48, 12, 20)
    assert data.spec.input_shape == [1, 28, 28] and data.spec.preprocessing["mean"] == [mean]
    x, _ = next(data.val.batches(0))
    raw = data.val.x[: len(x)].float() / 255
    assert torch.allclose(x, (raw - mean) / data.spec.preprocessing["std"][0])
    assert data.spec.class_names[0] == ("0" if name == "mnist" else "T-shirt/top")


def test_cifar10_python_batches_load_as_rgb_with_crop_augmentation(tmp_path, cifar_files_pass_torchvision_checksums):
    data = build_data(data_cfg("cifar10", cifar10_files(tmp_path)), DataContext(seed=0))
    assert data.spec.input_shape == [3, 32, 32] and data.spec.class_names == CIFAR_CLASSES
    assert (data.train.num_samples + data.val.num_samples, data.test.num_samples) == (100, 20)
    x, _ = next(data.train.batches(0))
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32


def test_mnist_trains_end_to_end(tmp_path):
    root = mnist_files(tmp_path / "data", train=200)
    run_dir = train(tmp_path, "data=mnist", f"data.root={root}", "data.batch_size=32", "trainer.max_epochs=3",
                    "optimizer.lr=3e-3")
    assert metrics(run_dir)["best"]["val_accuracy"] > 0.5  # a bar per class: learnable in a few steps


def test_missing_files_say_where_they_go_and_how_to_download(tmp_path, capsys):
    code = run_in_process("train", "data=mnist", f"data.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    assert code == 2 and "data.download=true" in err and str(tmp_path / "MNIST" / "raw") in err
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        build_data(data_cfg("cifar10", tmp_path), DataContext())


def test_tensor_loader_matches_a_dataloader_over_the_same_samples():
    x, y = torch.randn(50, 3, 4, 4), torch.arange(50)
    fast = TensorLoader(x, y, batch_size=8, shuffle=True, seed=7, drop_last=True)
    streamed = StreamLoader(TensorDataset(x, y), batch_size=8, shuffle=True, seed=7, drop_last=True)
    for epoch in (0, 1):
        pairs = list(zip(fast.batches(epoch), streamed.batches(epoch), strict=True))
        assert len(pairs) == 6 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)
    # The same samples a plain DataLoader covers in an epoch, without its per-sample __getitem__ and collate.
    plain = torch.cat([yb for _, yb in DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, drop_last=True)])
    assert len(plain) == sum(len(yb) for _, yb in fast.batches(0))
