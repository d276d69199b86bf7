"""fast_transformer for PyTorch's nn.TransformerEncoder and a lone nn.TransformerEncoderLayer (batch_first)."""
from __future__ import annotations

import torch.nn as nn

from . import packing
from .core import FastModule
from .mha import key_padding_plan, mha_reason, packed_self_attention


def packed_layer(fast: FastModule, layer, x, p):
    """One nn.TransformerEncoderLayer (eval) on packed tokens; `layer` has its attributes."""
    def sa(h):
        return packed_self_attention(fast, layer.self_attn, h, p)

    def ff(h):
        return layer.linear2(layer.activation(layer.linear1(h)))

    if layer.norm_first:
        x = x + sa(layer.norm1(x))
        return x + ff(layer.norm2(x))
    x = layer.norm1(x + sa(x))
    return layer.norm2(x + ff(x))


def layer_reason(layer: nn.Module) -> str | None:
    """Why the packed path cannot run this encoder layer, or None."""
    if type(layer) is not nn.TransformerEncoderLayer:
        return f"{type(layer).__name__} is a subclass of nn.TransformerEncoderLayer whose forward may differ"
    reason = mha_reason(layer.self_attn)
    if reason:
        return reason
    if not callable(getattr(layer, "activation", None)):
        return "its activation is not callable"
    return None


class FastTransformerEncoder(FastModule):
    """Packed forward of nn.TransformerEncoder (batch_first). Padding positions are zero, as in
    PyTorch's own nested-tensor fast path. An attention `mask` or is_causal runs the original."""

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
        for i, layer in enumerate(m.layers):
            r = layer_reason(layer)
            if r:
                return f"layer {i}: {r}"
        return None

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        if self.training or mask is not None or is_causal or src.dim() != 3:
            return self.original(src, mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        p = key_padding_plan(self, src, src_key_padding_mask)
        if p.total == 0:
            return src.new_zeros(src.shape)
        x = packing.pack(src, p)
        for layer in self.layers:
            x = packed_layer(self, layer, x, p)
        if getattr(self, "norm", None) is not None:
            x = self.norm(x)
        return packing.unpack(x, p)


class FastTransformerEncoderLayer(FastModule):
    """Packed forward of a lone nn.TransformerEncoderLayer (batch_first)."""

    def __init__(self, original, cfg):
        super().__init__(original, cfg)
        self.norm_first = original.norm_first
        if not isinstance(original.activation, nn.Module):
            object.__setattr__(self, "activation", original.activation)

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
        return layer_reason(m)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        if self.training or src_mask is not None or is_causal or src.dim() != 3:
            return self.original(src, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        p = key_padding_plan(self, src, src_key_padding_mask)
        if p.total == 0:
            return src.new_zeros(src.shape)
        return packing.unpack(packed_layer(self, self, packing.pack(src, p), p), p)
