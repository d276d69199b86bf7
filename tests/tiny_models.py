"""Tiny real models used by the tests as `tiny_models:NAME` specs (imported from tests/)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.out = nn.Linear(64, 8)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.out(y[:, -1])


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        raise RuntimeError("this model always fails")


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


def cnn():
    return _seeded(CNN)


def cnn_with_inputs():
    return _seeded(CNN), torch.randn(2, 3, 16, 16)


def mlp():
    return _seeded(MLP)


def lstm():
    return _seeded(LSTMNet)


def raises():
    return _seeded(Raises)


def broken_factory():
    raise ValueError("cannot build")


def not_a_model():
    return 42


class BakesBatch(nn.Module):
    """Correct in eager at any batch; traced, `int(x.shape[0])` becomes a constant (the example's batch)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, x):
        return self.lin(x) * torch.ones(int(x.shape[0]), 1)


class IntOutputs(nn.Module):
    """Returns class labels only (an integer tensor)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, x):
        return self.lin(x).argmax(-1)


class NaNOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, x):
        return self.lin(x) / 0.0 * 0.0


def bakes_batch():
    return _seeded(BakesBatch), torch.randn(4, 16)


def int_outputs():
    return _seeded(IntOutputs), torch.randn(4, 16)


def nan_outputs():
    return _seeded(NaNOutputs), torch.randn(4, 16)


# Set by the process that optimizes it (tests/test_optimize.py): a fresh process sees None, so a saved
# folder that rebuilds from the spec `tiny_models:mlp_this_process_only` does not reload there.
THIS_PROCESS_ONLY = None


def mlp_this_process_only():
    if THIS_PROCESS_ONLY is None:
        raise RuntimeError("tiny_models.THIS_PROCESS_ONLY is not set in this process")
    return _seeded(MLP)


@dataclasses.dataclass
class Scores:
    """A custom output structure: torch.export records it in the program; a process that has not
    imported this module cannot rebuild it (as with transformers' ModelOutput classes)."""

    logits: torch.Tensor

    def to_tuple(self):  # as transformers' ModelOutput: how torchslim reads the tensors out
        return (self.logits,)


torch.utils._pytree.register_dataclass(Scores, serialized_type_name="tiny_models.Scores")


class CustomOutput(nn.Module):
    def __init__(self):
        super().__init__()
        # many small layers: eager's per-module Python dominates, so the AOTI package clearly wins
        self.net = nn.Sequential(*[m for _ in range(32) for m in (nn.Linear(64, 64), nn.GELU())], nn.Linear(64, 10))

    def forward(self, x):
        return Scores(self.net(x))


def custom_output():
    return _seeded(CustomOutput)
