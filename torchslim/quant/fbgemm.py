"""fbgemm's dynamic INT8 Linear (`quantized::linear_dynamic`: the input quantized per tensor on the fly,
INT8 per-channel weights, INT32 accumulation, FP32 out) as a module that torch.compile traces.

torch.ao's `nn.quantized.dynamic.Linear` runs the same kernel, but its packed weight is a TorchScript
object that Dynamo cannot trace through; here the packed weight waits in a table and the graph sees one
opaque torch.library op with an integer key (torch's own AOTI-ready `_quantized.wrapped_*` ops break under
Inductor's freezing). Where the CPU lacks VNNI, the activations are 7-bit
(`reduce_range`: AVX2's u8 x s8 multiply-add saturates int16 with 8-bit ones).

At batch 1 this is the fastest Linear kernel with FP32 activations on an AVX2-only CPU: 2.87x FP32
`F.linear` over a decode step of SmolLM2-135M's Linears at 2 threads, against 1.73x for INT4 (BF16 input)
and 1.69x for FP16 weights (benchmarks/generation_kernels.py; BENCHMARKS.md 2026-12-07). Each call still
crosses Python, which costs more than that gain at 211 calls per decode step; at one call per step (the
LM head) it pays."""
from __future__ import annotations

import copy
import itertools
import weakref

import torch
import torch.nn as nn

from .common import quiet

__all__ = ["DynamicInt8Linear", "available", "input_absmax", "pack_int8", "smoothing"]

_PACKED: dict[int, object] = {}  # key -> fbgemm packed weight; each module removes its own when collected
_KEYS = itertools.count()


# A Python kernel registered through torch.library.Library: Inductor calls it as an extern kernel. (A
# torch.library.custom_op costs about twice the per-call Python time, which at 211 calls per decode step
# of a 135M model was a third of the step.)
_LIB = torch.library.Library("torchslim", "DEF")
_LIB.define("fbgemm_dynamic_int8_linear(Tensor x, int key, int out_features, bool reduce_range) -> Tensor")


def _linear(x, key, out_features, reduce_range):
    return torch.ops.quantized.linear_dynamic(x, _PACKED[key], reduce_range)


def _linear_meta(x, key, out_features, reduce_range):
    return x.new_empty((*x.shape[:-1], out_features))


_LIB.impl("fbgemm_dynamic_int8_linear", _linear, "CPU")
_LIB.impl("fbgemm_dynamic_int8_linear", _linear_meta, "Meta")


def pack_int8(weight: torch.Tensor):
    """fbgemm's packed weight for `quantized::linear_dynamic`: INT8 per output channel, symmetric (absmax / 127)."""
    w = weight.detach().float()
    scale = (w.abs().amax(1).clamp(min=1e-12) / 127).double()
    with quiet():
        q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(q, None)


def available() -> str | None:
    """None where fbgemm's dynamic INT8 Linear runs here, else why not."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "this torch build has no fbgemm quantized engine (x86 CPUs only)"
    return None


class DynamicInt8Linear(nn.Module):
    """An FP32 Linear whose weight is INT8 per output channel (symmetric, absmax / 127) and whose input
    is quantized per token at each call; float in, float out (the input is cast to FP32).

    fbgemm quantizes its whole input with one scale: each row is divided by its own absmax first and
    the output rows multiplied back, which makes that one scale per token (at batch-1 decode they are
    the same). `smooth` (per input channel, SmoothQuant): the weight's columns are multiplied by it and
    the input divided by it, moving activation outliers into the weights, which INT8 per channel takes
    better. These elementwise steps are plain torch ops around the kernel, so Inductor fuses them with
    their neighbours."""

    def __init__(self, linear: nn.Linear, reduce_range: bool, smooth: torch.Tensor | None = None):
        super().__init__()
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth.float()
        self.register_buffer("inv_smooth", None if smooth is None else (1.0 / smooth.float()).contiguous())
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.in_features, self.out_features, self.reduce_range = linear.in_features, linear.out_features, reduce_range
        self.register_buffer("bias", bias)
        self._own(pack_int8(w))

    def _own(self, packed) -> None:
        self.key = next(_KEYS)
        _PACKED[self.key] = packed
        weakref.finalize(self, _PACKED.pop, self.key, None)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = torch.ops.quantized.linear_unpack(_PACKED[self.key])[0]  # qint8, per channel

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        w = state_dict.pop(prefix + "weight", None)
        if w is not None:
            _PACKED[self.key] = torch.ops.quantized.linear_prepack(w, None)
        elif strict:
            missing_keys.append(prefix + "weight")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def __deepcopy__(self, memo):
        new = copy.copy(self)  # the packed weight is never written: a copy shares it under its own key
        new.__dict__ = {**self.__dict__, "_buffers": copy.deepcopy(self._buffers, memo),
                        "_modules": {}, "_parameters": {}}
        new._own(_PACKED[self.key])
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        a = x.abs().amax(-1, keepdim=True).clamp(min=1e-12)
        y = torch.ops.torchslim.fbgemm_dynamic_int8_linear((x / a).contiguous(), self.key, self.out_features, self.reduce_range) * a
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, " \
               f"{'7' if self.reduce_range else '8'}-bit dynamic activations (fbgemm)"


@torch.no_grad()
def input_absmax(model: nn.Module, names, batches) -> dict[str, torch.Tensor]:
    """{name: the absmax of each input channel of that Linear} over `model(**batch)` for each batch."""
    amax, hooks = {}, []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1]).abs().amax(0)
            amax[name] = torch.maximum(amax[name], x) if name in amax else x
        return fn

    for n in names:
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook(n)))
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return amax


def smoothing(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors s = max|x|^alpha / max|W|^(1 - alpha) (Xiao et al. 2023)."""
    w = weight.detach().float().abs().amax(0).clamp(min=1e-5)
    return (act_absmax.clamp(min=1e-5) ** alpha / w ** (1 - alpha)).clamp(min=1e-5)

