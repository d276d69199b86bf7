"""Every call into a quantization backend lives here, so upstream churn stays in one file.

- PyTorch's eager quantized kernels (`torch.ao.quantization.quantize_dynamic`, fbgemm/oneDNN):
  deprecated upstream in favour of torchao, still the fastest eager dynamic INT8 for Linear/LSTM/GRU.
- torchao (`quantize_` with configs): the maintained path; pays off under torch.compile.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import torch
import torch.nn as nn


@contextlib.contextmanager
def quiet():
    """Silence deprecation chatter and torchao's optional-kernel loader messages."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.ao")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@contextlib.contextmanager
def quantized_engine(name: str | None):
    before = torch.backends.quantized.engine
    if name and name in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def legacy_dynamic_int8(model: nn.Module, layer_types: tuple[type, ...], per_channel: bool) -> nn.Module:
    """torch.ao's eager dynamic INT8 (weights int8, activations quantized per call), in place."""
    with quiet():
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        qconfigs = {}
        for t in layer_types:
            # Per-channel weights for Linear; the RNN kernels take per-tensor weights only.
            qconfigs[t] = per_channel_dynamic_qconfig if per_channel and t is nn.Linear else default_dynamic_qconfig
        return quantize_dynamic(model, qconfigs, dtype=torch.qint8, inplace=True)


def torchao_quantize(model: nn.Module, config, filter_fn=None) -> nn.Module:
    """torchao's `quantize_` (in place)."""
    with quiet():
        from torchao.quantization import quantize_

        quantize_(model, config, filter_fn=filter_fn)
    return model


def torchao_config(kind: str, **kw):
    """Build a torchao config by our name for it, so callers never import torchao themselves."""
    with quiet():
        import torchao.quantization as q

        if kind == "int8_dynamic":
            return q.Int8DynamicActivationInt8WeightConfig(**kw)
        if kind == "int8_weight_only":
            return q.Int8WeightOnlyConfig(**kw)
        if kind == "int4_weight_only":
            return q.Int4WeightOnlyConfig(**kw)
    raise ValueError(f"unknown torchao config {kind!r}")
