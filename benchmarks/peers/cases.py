"""The benchmark cases: a model, the inputs it is served with, real calibration batches, and
held-out batches for fidelity, all at one batch size.

MiniLM comes twice: `minilm-*` feeds sequences whose 128 tokens are all real text (tweets run
together, so no padding), `padded-b32` feeds 32 single tweets padded to 128 tokens (about 80% of
the positions are padding), the shape a fixed-length serving stack sends.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from torchslim import Example, Workload


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    model: str  # fashion | resnet18 | minilm | padded | lstm
    batch: int
    classifier: bool  # outputs are class scores: top-1 agreement is meaningful
    transformer: bool = False
    eval_samples: int = 64  # held-out samples for fidelity (whole batches)


CASES = [
    Case("fashion-b1", "Fashion-MNIST CNN (demo), batch 1", "fashion", 1, True, eval_samples=256),
    Case("fashion-b64", "Fashion-MNIST CNN (demo), batch 64", "fashion", 64, True, eval_samples=256),
    Case("resnet18-b1", "ResNet-18-shaped CNN, 224x224, batch 1", "resnet18", 1, True, eval_samples=16),
    Case("resnet18-b16", "ResNet-18-shaped CNN, 224x224, batch 16", "resnet18", 16, True, eval_samples=32),
    Case("minilm-b1", "all-MiniLM-L6-v2, seq 128 (no padding), batch 1", "minilm", 1, False, True, eval_samples=64),
    Case("minilm-b32", "all-MiniLM-L6-v2, seq 128 (no padding), batch 32", "minilm", 32, False, True, eval_samples=64),
    Case("lstm-b1", "2-layer LSTM (hidden 512, 32 steps), batch 1", "lstm", 1, True, eval_samples=64),
    Case("lstm-b64", "2-layer LSTM (hidden 512, 32 steps), batch 64", "lstm", 64, True, eval_samples=128),
    Case("padded-b32", "Transformer batch with padding: MiniLM, 32 tweets padded to 128", "padded", 32, False, True,
         eval_samples=64),
]
QUICK = ("fashion-b1", "resnet18-b1", "minilm-b1", "lstm-b1")
BY_ID = {c.id: c for c in CASES}


@dataclass
class Bundle:
    """What every method of a case gets: the workload (FP32 model, example, calibration, and the
    task metric torchslim's search uses) and the held-out batches fidelity is measured on."""

    case: Case
    workload: Workload
    eval_inputs: list[tuple]

    @property
    def model(self) -> torch.nn.Module:
        return self.workload.model

    @property
    def example(self) -> tuple:
        return tuple(self.workload.example.args)

    def calibration(self) -> list[tuple]:
        return [tuple(e.args) for e in self.workload.calibration()]


def build(case: Case, task_metric: bool = True, max_samples: tuple[int, int] | None = None) -> Bundle:
    """The case's Bundle; task_metric=False drops the workload's evaluate (torchslim then chooses
    on output fidelity alone, which is faster); max_samples = (calibration, held-out) caps, in
    samples (whole batches, at least one), for short runs."""
    samples = case.eval_samples if max_samples is None else min(case.eval_samples, max_samples[1])
    workload, eval_inputs = _BUILDERS[case.model](case.batch, samples)
    if not task_metric:
        workload = dataclasses.replace(workload, evaluate=None, metric=None)
    if max_samples is not None:
        calib = list(workload.calibration())[:max(1, max_samples[0] // case.batch)]
        workload = dataclasses.replace(workload, calibration=lambda: calib)
        eval_inputs = eval_inputs[:max(1, max_samples[1] // case.batch)]
    return Bundle(case, workload, eval_inputs)


def _chunks(tensors: tuple, batch: int) -> list[tuple]:
    n = len(tensors[0]) - len(tensors[0]) % batch
    return [tuple(t[i:i + batch].contiguous() for t in tensors) for i in range(0, n, batch)]


def _fashion(batch: int, samples: int):
    from torchslim.examples import fashion_mnist

    workload = fashion_mnist.workload(batch)
    x_test, _ = fashion_mnist.load_split(train=False)
    held_out = x_test[-max(samples, batch):]  # the end of the test set: not the example, not calibration
    return workload, _chunks((held_out,), batch)


def _resnet18(batch: int, samples: int):
    from benchmarks import models

    gen = torch.Generator().manual_seed(7)  # a different stream from the example and calibration
    held_out = torch.randn(max(samples, batch), 3, 224, 224, generator=gen)
    return models.resnet18(batch), _chunks((held_out,), batch)


def _lstm(batch: int, samples: int):
    from benchmarks import models

    model, x = models.lstm(batch)
    gen = torch.Generator().manual_seed(2)
    calib = [Example((torch.randn(batch, x.shape[1], x.shape[2], generator=gen),)) for _ in range(max(1, 64 // batch))]
    held_out = torch.randn(max(samples, batch), x.shape[1], x.shape[2], generator=gen)
    workload = Workload(model=model, example=Example((x,)), name="lstm-2x512", calibration=lambda: calib)
    return workload, _chunks((held_out,), batch)


def _padded(batch: int, samples: int):
    """The MiniLM example as torchslim ships it: real tweets, each padded to 128 tokens."""
    from torchslim.examples import minilm

    workload = minilm.workload(batch, 128)
    tok = minilm.load_tokenizer()
    _, (test_texts, _) = minilm.load_tweets()
    ids, mask = minilm.tokenize(tok, test_texts[-max(samples, batch):], 128)
    return workload, _chunks((ids, mask), batch)


def _minilm(batch: int, samples: int):
    """MiniLM on sequences of 128 real tokens: tweets joined until the sequence is full."""
    from torchslim.examples import minilm

    workload = minilm.workload(batch, 128)
    tok = minilm.load_tokenizer()
    (train_texts, _), (test_texts, _) = minilm.load_tweets()

    def dense(texts: list[str], n: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        # sample i joins 12 tweets (well over 128 tokens) from a window that moves 5 tweets a
        # sample, wrapping around: the 320 test tweets give as many distinct sequences as needed
        joined = [" ".join(texts[(start + 5 * i + j) % len(texts)] for j in range(12)) for i in range(n)]
        return minilm.tokenize(tok, joined, 128)

    calib = [Example(t) for t in _chunks(dense(train_texts, max(batch, 64), 0), batch)]
    example = Example(_chunks(dense(test_texts, batch, 0), batch)[0])
    held_out = _chunks(dense(test_texts, max(samples, batch), 157), batch)
    workload = dataclasses.replace(workload, example=example, calibration=lambda: calib)
    return workload, held_out


_BUILDERS = {"fashion": _fashion, "resnet18": _resnet18, "minilm": _minilm, "padded": _padded, "lstm": _lstm}
