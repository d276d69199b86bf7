"""PT2E observers as switchable fake-quantizers: what sensitivity ranks layers with."""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import quiet

__all__ = ["is_observer", "Pt2eFakeQuant"]

_QUANT_DTYPES = (torch.uint8, torch.int8, torch.quint8, torch.qint8)


def is_observer(module: nn.Module) -> bool:
    """True for an observer that prepare_pt2e inserted and convert_pt2e would turn into quantize/dequantize."""
    with quiet():
        from torchao.quantization.pt2e.observer import ObserverBase

    return isinstance(module, ObserverBase) and getattr(module, "dtype", None) in _QUANT_DTYPES


class Pt2eFakeQuant(nn.Module):
    """What convert_pt2e makes of one observer (quantize then dequantize with its calibrated scale, or
    with a scale chosen per call for dynamic activations), as a module that can be switched off:
    with `enabled` False it passes its input through unchanged (the layer stays in float)."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        self.enabled = True
        self.qmin, self.qmax = int(observer.quant_min), int(observer.quant_max)
        self.dynamic = bool(getattr(observer, "is_dynamic", False))
        self.eps = float(getattr(observer, "eps", torch.finfo(torch.float32).eps))
        self.dtype = observer.dtype
        self.axis = None
        if not self.dynamic:
            scale, zero_point = observer.calculate_qparams()
            self.register_buffer("scale", scale.detach().float().flatten().clone())
            self.register_buffer("zero_point", zero_point.detach().flatten().to(torch.int32).clone())
            self._scalar = (float(self.scale[0]), int(self.zero_point[0]))
            if observer.qscheme in (torch.per_channel_affine, torch.per_channel_symmetric):
                self.axis = int(observer.ch_axis)

    def forward(self, x):
        if not self.enabled:
            return x
        if self.dynamic:  # as convert_pt2e's choose_qparams.tensor -> quantize_per_tensor.tensor
            scale, zp = torch.ops.quantized_decomposed.choose_qparams.tensor(x, self.qmin, self.qmax, self.eps, self.dtype)
            return torch.fake_quantize_per_tensor_affine(x, scale.float(), zp.to(torch.int32), self.qmin, self.qmax)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, *self._scalar, self.qmin, self.qmax)
        # Per-channel means a weight: the same tensor every call, so its quantized copy is kept.
        src = getattr(self, "_src", None)
        if src is not x or self._src_version != x._version:
            self._cached = torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)
            self._src, self._src_version = x, x._version
        return self._cached
