"""Every model builds from a data spec and trains a step on 1- and 3-channel images of several sizes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nettrain.data.spec import DataSpec
from nettrain.errors import UserError
from nettrain.models import MODELS, build_model

CONFIGS = {name: OmegaConf.load(f"{__import__('pathlib').Path(__file__).parents[1]}/configs/model/{name}.yaml")
           for name in MODELS}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32), (1, 28), (3, 70)])
def test_model_forward_and_backward(name, channels, size):
    if name in ("resnet34", "resnet50") and size in (28, 70):
        pytest.skip("same code path as resnet18 at this size; deep ResNets are slow to build on 2 CPU cores")
    spec = DataSpec(input_shape=[channels, size, size], num_classes=3, class_names=["a", "b", "c"])
    model = build_model(CONFIGS[name], spec)
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_dropout_is_configurable_everywhere(name):
    cfg = OmegaConf.merge(CONFIGS[name], {"dropout": 0.3})
    model = build_model(cfg, DataSpec(input_shape=[3, 16, 16], num_classes=2, class_names=["x", "y"]))
    assert model.head[0].p == 0.3


def test_mlp_takes_tabular_rows_and_convnets_refuse_them():
    spec = DataSpec(input_shape=[12], num_classes=1, class_names=[], task="regression")
    assert build_model(CONFIGS["mlp"], spec)(torch.randn(4, 12)).shape == (4, 1)
    with pytest.raises(UserError, match="needs image data"):
        build_model(CONFIGS["cnn"], spec)


def test_small_images_get_the_small_stem():
    small = build_model(CONFIGS["resnet18"], DataSpec(input_shape=[3, 32, 32], num_classes=10, class_names=list("abcdefghij")))
    large = build_model(CONFIGS["resnet18"], DataSpec(input_shape=[3, 224, 224], num_classes=10, class_names=list("abcdefghij")))
    assert small.backbone.conv1.kernel_size == (3, 3) and isinstance(small.backbone.maxpool, torch.nn.Identity)
    assert large.backbone.conv1.kernel_size == (7, 7)
