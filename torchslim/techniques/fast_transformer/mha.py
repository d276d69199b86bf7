"""fast_transformer for a lone nn.MultiheadAttention (batch_first), and the packed self-attention the
nn.TransformerEncoder family shares."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import packing
from .core import FastModule, refuse_tracing


def packed_self_attention(fast: FastModule, mha: nn.Module, x: torch.Tensor, p: packing.Packing) -> torch.Tensor:
    """An nn.MultiheadAttention's self-attention on packed tokens [N, E]: fused q|k|v projection,
    attention per sequence, output projection."""
    if getattr(mha, "in_proj", None) is not None:  # dynamic INT8's LinearMultiheadAttention
        qkv = mha.in_proj(x)
    else:
        qkv = torch.nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias)  # fused [N, 3E]
    return mha.out_proj(fast.packed_attention(qkv, None, None, p, mha.num_heads, None))


def key_padding_plan(fast: FastModule, src: torch.Tensor, key_padding_mask) -> packing.Packing:
    """The packing plan of a [batch, seq, hidden] input under PyTorch's key-padding-mask convention."""
    refuse_tracing()
    batch, seq, _ = src.shape
    keep = packing.keep_from_key_padding_mask(key_padding_mask, (batch, seq), src.device)
    return packing.plan(keep, batch, seq, src.device, fast.max_buckets)


def mha_reason(mha: nn.Module) -> str | None:
    """Why the packed path cannot run this attention module, or None."""
    if not mha.batch_first:
        return "batch_first=False (the packed path handles batch_first=True layers)"
    fused = getattr(mha, "in_proj", None) is not None or (mha._qkv_same_embed_dim and mha.in_proj_weight is not None)
    if not fused:
        return "separate q/k/v projection weights (kdim/vdim) are not handled"
    if getattr(mha, "bias_k", None) is not None or getattr(mha, "add_zero_attn", False):
        return "add_bias_kv / add_zero_attn are not handled"
    return None


class FastMultiheadAttention(FastModule):
    """Packed self-attention for a lone nn.MultiheadAttention (batch_first): the q|k|v and output
    projections run on the real tokens only, attention per length bucket. It takes over exactly the
    calls PyTorch's own MHA fast path takes (self-attention, need_weights=False, a key padding mask,
    no attn_mask) and, like that path's nested tensors, returns zeros at padded query positions and
    None for the weights. Every other call (need_weights=True, cross-attention, attn_mask,
    is_causal, training, unbatched) runs the original module."""

    def __init__(self, original, cfg):
        super().__init__(original, cfg)
        # in_proj_weight/bias are the original's own parameters, not children: register them too (same
        # keys, shared tensors), so casts, .to() and state dicts reach them. Direct assignment: the
        # attribute already resolves through __getattr__'s fallback, which register_parameter refuses.
        self._parameters.update(original.named_parameters(recurse=False))
        self._buffers.update(original.named_buffers(recurse=False))

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
        return mha_reason(m)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (self.training or need_weights or attn_mask is not None or is_causal or key_padding_mask is None
                or query.dim() != 3 or not (query is key and key is value)):
            return self.original(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                 attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        p = key_padding_plan(self, query, key_padding_mask)
        if p.total == 0:
            return query.new_zeros(query.shape), None
        return packing.unpack(packed_self_attention(self, self, packing.pack(query, p), p), p), None
