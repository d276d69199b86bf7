"""Benchmark-only model factories (random weights: speed and fidelity, not accuracy).

    torchslim optimize --model benchmarks/models.py:lstm --out out/lstm
    torchslim optimize --model benchmarks/models.py:resnet18 --out out/resnet18
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LSTMModel(nn.Module):
    """A 2-layer LSTM (hidden 512) over 64-dim features, classifying from the last step."""

    def __init__(self, features: int = 64, hidden: int = 512, classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


def _block(cin: int, cout: int, stride: int) -> nn.Module:
    return BasicBlock(cin, cout, stride)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


class ResNet18(nn.Module):
    """ResNet-18's layer shapes (torchvision is not importable beside torch 2.13 here)."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        chans, layers, cin = [64, 128, 256, 512], [], 64
        for i, c in enumerate(chans):
            layers += [_block(cin, c, 1 if i == 0 else 2), _block(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _seeded(cls):
    torch.manual_seed(0)
    m = cls().eval()
    for mod in m.modules():  # non-trivial BN statistics, as in a trained model
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def lstm(batch: int = 1, steps: int = 32):
    x = torch.randn(batch, steps, 64, generator=torch.Generator().manual_seed(1))
    return _seeded(LSTMModel), x


def resnet18(batch: int = 1):
    from torchslim import Example, Workload

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    calib = [Example((torch.randn(batch, 3, 224, 224, generator=gen),)) for _ in range(max(1, 32 // batch))]
    return Workload(model=_seeded(ResNet18), example=Example((x,)), name="resnet18-shaped", calibration=lambda: calib)


def resnet18_b16():
    return resnet18(16)
