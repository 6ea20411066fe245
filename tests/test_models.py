"""Every model builds from a data spec and trains a step on 1- and 3-channel images of several sizes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nettrain.config.registry import MODELS
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError
from nettrain.models.build import build_model

CONFIGS = {name: OmegaConf.load(f"{__import__('pathlib').Path(__file__).parents[1]}/configs/model/{name}.yaml")
           for name in MODELS}
# Models of images and tables that take any input size (the Inceptions and the timm zoo have tests of
# their own in test_zoo.py; the text models take token ids: test_text.py, test_text_lm.py).
ARRAY_MODELS = [name for name in MODELS if set(MODELS.get(name).inputs) & {"image", "tabular"}]
ANY_SIZE = [name for name in ARRAY_MODELS if name not in ("inception_v3", "googlenet", "timm")]


@pytest.mark.parametrize("name", ANY_SIZE)
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


@pytest.mark.parametrize("name", ARRAY_MODELS)
def test_dropout_is_configurable_everywhere(name):
    cfg = OmegaConf.merge(CONFIGS[name], {"dropout": 0.3}, {"arch": "resnet10t"} if name == "timm" else {})
    size = 75 if name == "inception_v3" else 16
    model = build_model(cfg, DataSpec(input_shape=[3, size, size], num_classes=2, class_names=["x", "y"]))
    assert model.head[0].p == 0.3


def test_mlp_takes_tabular_rows_and_convnets_refuse_them():
    spec = DataSpec(input_shape=[12], num_classes=1, class_names=[], task="regression")
    assert build_model(CONFIGS["mlp"], spec)(torch.randn(4, 12)).shape == (4, 1)
    with pytest.raises(UserError, match="needs image data"):
        build_model(CONFIGS["cnn"], spec)


@pytest.mark.parametrize("size, stem, last_stage", [(32, (3, 3), 4), (64, (3, 3), 4), (224, (7, 7), 7)])
def test_small_images_get_the_small_stem_and_the_last_stage_sees_4x4(size, stem, last_stage):
    model = build_model(CONFIGS["resnet18"], DataSpec(input_shape=[3, size, size], num_classes=2, class_names=["a", "b"]))
    assert model.backbone.conv1.kernel_size == stem
    assert isinstance(model.backbone.maxpool, torch.nn.Identity) == (size <= 64)
    features = {}
    model.backbone.layer4.register_forward_hook(lambda module, inputs, output: features.update(out=output))
    model.eval()(torch.randn(1, 3, size, size))
    assert features["out"].shape[-2:] == (last_stage, last_stage)
