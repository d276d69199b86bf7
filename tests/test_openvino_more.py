"""NNCF's accuracy control against the workload's task metric (issue 14): `openvino-int8-ac` on a
tiny real CNN; skipped without the openvino extra."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from torchslim import engines
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.recipes import Recipe, apply
from torchslim.techniques import Context, OpenVinoInt8Config, TaskMetric
from torchslim.techniques.base import handler

pytestmark = pytest.mark.skipif(engines.missing("openvino", "nncf") is not None, reason="install torchslim[openvino]")


def _cnn_case():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10)).eval()
    example = Example((torch.randn(4, 3, 16, 16, generator=gen),))
    calib = [Example((torch.randn(4, 3, 16, 16, generator=gen),)) for _ in range(8)]
    held_out = [torch.randn(16, 3, 16, 16, generator=gen) for _ in range(4)]
    return model, example, (lambda: calib), held_out


def test_openvino_int8_accuracy_control_keeps_the_task_metric_within_budget():
    model, example, calib, held_out = _cnn_case()
    with torch.no_grad():
        labels = [model(x).argmax(1) for x in held_out]

    def top1(m) -> float:  # the task metric: agreement with the float model's classes, in percent
        with torch.no_grad():
            return 100.0 * float(sum((m(x).argmax(1) == y).sum() for x, y in zip(held_out, labels))) / sum(len(y) for y in labels)

    cfg = OpenVinoInt8Config(accuracy_control=True)
    assert cfg.label() == "openvino-int8-ac" and not cfg.per_layer_skip
    no_task = Context(device=torch.device("cpu"), example=example, calibration=calib)
    assert "task metric" in handler(cfg).applies(model, cfg, no_task)

    calls = []
    task = TaskMetric(lambda m: calls.append(1) or top1(m), max_drop=2.0)
    ctx = Context(device=torch.device("cpu"), example=example, calibration=calib, task=task)
    slim = apply(copy.deepcopy(model), Recipe((cfg,)), ctx)
    assert isinstance(slim, engines.OpenVinoModule)
    assert len(calls) >= 2  # NNCF evaluated at least the float and the INT8 model with the workload's metric
    assert top1(slim) >= 100.0 - 2.0
    assert any("quantize_with_accuracy_control" in n for n in ctx.notes)
    with torch.no_grad():
        assert compare(example(model), example(slim)).min_cosine >= 0.98
