"""Convolutional models for images: a small CNN and torchvision's ResNets and Inceptions, shaped by the data
(models.build has checked that the data is images)."""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from omegaconf import DictConfig
from torch import Tensor, nn

from nettrain.data.spec import DataSpec
from nettrain.errors import invalid
from nettrain.models.net import Net


def cnn(cfg: DictConfig, spec: DataSpec) -> Net:
    channels, size = spec.input_shape[0], min(spec.input_shape[1:])
    pool = nn.MaxPool2d if cfg.pool == "max" else nn.AvgPool2d
    layers: list[nn.Module] = []
    for out in cfg.channels:
        for _ in range(cfg.get("convs_per_stage", 1)):
            layers += [nn.Conv2d(channels, out, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        if size >= 2:  # pool while there is something to pool: any input size works
            layers.append(pool(2))
            size //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Net(nn.Sequential(*layers), channels, spec.num_classes, cfg.dropout, convolutional=True)


def _resnet(depth: int) -> Callable[[DictConfig, DataSpec], Net]:
    def build(cfg: DictConfig, spec: DataSpec) -> Net:
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        channels, size = spec.input_shape[0], max(spec.input_shape[1:])
        if size <= 64:
            # Small-image stem (as for CIFAR): a 3x3 conv and no max-pool, so the last stage sees 4x4
            # instead of 1x1. Stride 1 up to 32 px, 2 above: 64 px also ends at 4x4, at a quarter of
            # the stride-1 cost (51 vs 13 samples/s for ResNet-18 training on 2 CPU cores).
            net.conv1 = nn.Conv2d(channels, 64, 3, stride=1 if size <= 32 else 2, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        features = net.fc.in_features
        net.fc = nn.Identity()
        return Net(net, features, spec.num_classes, cfg.dropout, convolutional=True)

    return build


resnet18 = _resnet(18)
resnet34 = _resnet(34)
resnet50 = _resnet(50)


# Inception networks (torchvision), with the smallest input each can take: below it a pooling
# stage would have nothing left to pool. They train without their auxiliary classifiers
# (aux_logits=False): with batch normalization those act as little more than a regularizer, and
# they would make the loss model-specific; eval and export see the one classifier either way.
INCEPTIONS = {"inception_v3": ("Conv2d_1a_3x3", 75), "googlenet": ("conv1", 15)}


def _inception(name: str) -> Callable[[DictConfig, DataSpec], Net]:
    stem, min_size = INCEPTIONS[name]

    def build(cfg: DictConfig, spec: DataSpec) -> Net:
        channels, size = spec.input_shape[0], min(spec.input_shape[1:])
        if size < min_size:
            raise invalid("model", name, f"needs images of at least {min_size} px, but the data has {size} px; "
                                         f"raise data.image_size (or use model=resnet18, which takes any size)")
        # dropout=0: nettrain's head holds model.dropout.
        net = getattr(torchvision.models, name)(weights=None, aux_logits=False, init_weights=True, dropout=0.0)
        if channels != 3:
            conv = getattr(net, stem).conv
            getattr(net, stem).conv = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                                padding=conv.padding, bias=False)
        features = net.fc.in_features
        net.fc = nn.Identity()
        return Net(net, features, spec.num_classes, cfg.dropout, convolutional=True)

    return build


inception_v3 = _inception("inception_v3")
googlenet = _inception("googlenet")


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.f = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f(x)


class Scale(nn.Module):
    """Multiplies by a constant: the ResNet-9 recipes scale the pooled features (so the logits) down, which
    with label smoothing keeps the early steps of a high learning rate from saturating the softmax."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def _conv_bn(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True)]


def resnet9(cfg: DictConfig, spec: DataSpec) -> Net:
    """The small residual net of the CIFAR-10 speed runs (DAWNBench's ResNet-9): a stem, then three stages of
    conv-bn-relu and max-pooling, the first and last with a residual pair of convs; global max-pooling;
    batch norm everywhere and no conv biases."""
    stem, first, second, third = cfg.channels
    layers = [*_conv_bn(spec.input_shape[0], stem),
              *_conv_bn(stem, first), nn.MaxPool2d(2), Residual(*_conv_bn(first, first), *_conv_bn(first, first)),
              *_conv_bn(first, second), nn.MaxPool2d(2),
              *_conv_bn(second, third), nn.MaxPool2d(2), Residual(*_conv_bn(third, third), *_conv_bn(third, third)),
              nn.AdaptiveMaxPool2d(1), nn.Flatten(), Scale(cfg.scale)]
    return Net(nn.Sequential(*layers), third, spec.num_classes, cfg.dropout, convolutional=True)
