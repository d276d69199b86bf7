"""NNCF's accuracy control against the workload's task metric (issue 14): `openvino-int8-ac` on a
tiny real CNN; skipped without the openvino extra."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn

from torchslim import engines
from torchslim.fidelity import compare
from torchslim.progress import quiet
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


def test_an_int8_graph_without_a_bf16_kernel_compiles_with_fp32_float_parts(tmp_path):
    """OpenVINO 2026.4 has no CPU kernel for NNCF INT8 convs exported with static shapes when the float
    parts run in BF16 on AVX512-BF16 CPUs without AMX (AMD EPYC: 'No suitable implementations'); the
    technique compiles such a graph with FP32 float parts and says so. Elsewhere it compiles as is."""
    import nncf
    import openvino as ov

    from torchslim import device as dev
    from torchslim.techniques.openvino import compile_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                          nn.ReLU()).eval()
    x = torch.randn(1, 1, 28, 28)
    static = ov.convert_model(model, example_input=(x,))  # static shapes, as a peer would convert it
    with quiet():
        quantized = nncf.quantize(static, nncf.Dataset([torch.randn_like(x) for _ in range(4)], lambda b: [b.numpy()]), subset_size=4)
    ov.save_model(quantized, str(tmp_path / "model.xml"), compress_to_fp16=False)
    files = {n: (tmp_path / n).read_bytes() for n in ("model.xml", "model.bin")}
    notes: list[str] = []
    meta = {"config": {"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}, "threads": 2, **engines.out_spec(model, Example((x,))), "notes": notes}
    module = compile_module(files, meta, notes)
    assert compare(model(x), module(x)).min_cosine > 0.99
    caps = dev.capabilities()
    if caps.avx512_bf16 and not caps.amx and not os.environ.get(dev.FLAGS_ENV):  # the host class it fails on
        assert module.meta["config"]["INFERENCE_PRECISION_HINT"] == "f32" and "No suitable implementations" in notes[-1]
    reloaded = engines.OpenVinoModule({n: module.file(n) for n in module.names}, module.meta)  # as a saved folder reloads
    assert torch.equal(reloaded(x), module(x))
