"""DenseNet-121 (Huang et al. 2017) built from torch alone, module for module as torchvision builds it.

Why not `torchvision.models.densenet121`: importing any part of torchvision imports all of it
(every model family, `torchvision.ops` and through it `torch._dynamo`), which roughly doubles the
start-up of a command that classifies one film (`cxrd predict`) and of every training child. What
must stay true, and `tests/cxrmodel/test_densenet.py` checks against torchvision itself:

- the same module tree, so the state-dict keys (`features.denseblock1.denselayer1.norm1.weight`,
  ..., `classifier.bias`) are torchvision's and every checkpoint that loads there loads here;
- the same construction order and initialisation, so a seeded build draws the same weights;
- the same forward computation, so outputs are identical.

Only what inference and training use is kept: no memory-efficient checkpointing, no dropout
(torchvision's `drop_rate` defaults to 0 and cxrd never sets it).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

GROWTH_RATE = 32
BLOCKS = (6, 12, 24, 16)
INIT_FEATURES = 64
BN_SIZE = 4


class _DenseLayer(nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, prev_features: list[Tensor]) -> Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(prev_features, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class _DenseBlock(nn.ModuleDict):
    _version = 2  # as torchvision's, so saved state dicts carry the same metadata

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size))

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet121(nn.Module):
    """`features` (conv stem, four dense blocks, three transitions, norm5) and a linear `classifier`."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, INIT_FEATURES, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(INIT_FEATURES)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = INIT_FEATURES
        for i, num_layers in enumerate(BLOCKS):
            self.features.add_module(f"denseblock{i + 1}",
                                     _DenseBlock(num_layers, num_features, BN_SIZE, GROWTH_RATE))
            num_features += num_layers * GROWTH_RATE
            if i != len(BLOCKS) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():  # torchvision's initialisation, in the same order
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)
