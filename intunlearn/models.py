"""The models of the unlearning experiments, all quantizable by `intunlearn.quantize`:
a multi-layer perceptron, a small CNN and a CIFAR-style ResNet-18 (3x3 stem, no max-pool, as in
the SalUn and Q-MUL experiments) with a width option so it fits small inputs and CPUs."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import nn


def mlp(input_shape, num_classes: int, width: int = 128) -> nn.Module:
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(),
                         nn.Linear(width, width // 2), nn.ReLU(), nn.Linear(width // 2, num_classes))


def _conv_bn_relu(in_channels, out_channels, stride=1):
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


def cnn(input_shape, num_classes: int, width: int = 16) -> nn.Module:
    """Three conv-BN-ReLU stages (the last two halve the resolution), global average pool, linear."""
    channels = input_shape[0]
    return nn.Sequential(*_conv_bn_relu(channels, width), *_conv_bn_relu(width, 2 * width, 2),
                         *_conv_bn_relu(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * width, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut is a 1x1 conv + BN when the shape changes."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, stages of 2 blocks at widths w, 2w, 4w, 8w."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        stages, channels = [], width
        for index, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if index == 0 else 2
            stages += [BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)]
            channels = out_channels
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def resnet18(input_shape, num_classes: int, width: int = 64) -> nn.Module:
    return ResNet18(input_shape[0], num_classes, width)


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18}


def build_model(name: str, input_shape, num_classes: int, width: int | None = None) -> nn.Module:
    """A freshly initialised model; width None keeps the model's default."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if width is not None and name == "mlp" and width < 2:
        raise ValueError(f"width must be >= 2 for the mlp (its second layer has width // 2 units), "
                         f"got {width}")
    kwargs = {} if width is None else {"width": width}
    return MODELS[name](tuple(input_shape), num_classes, **kwargs)
