"""Attention of packed tokens within each sequence: fused SDPA per length bucket, or one CUDA flash
varlen call over the whole packed batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .packing import Packing, dynamic_tokens, opaque


def varlen_available(q: torch.Tensor, head_dim: int, causal: bool = False) -> bool:
    """CUDA flash varlen attention (torch.nn.attention.varlen), feature-detected: CUDA tensors,
    fp16/bf16, a head size flash supports, and the module present in this torch (for causal
    attention: with a way to ask for it)."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or head_dim % 8 or head_dim > 256:
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return not causal or _varlen_causal() is not None


def _varlen_causal() -> dict | None:
    """The keyword that makes varlen_attn causal in this torch: window_size=(-1, 0) (2.10+), or an
    older is_causal=True; None if neither exists."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        return {"window_size": (-1, 0)}
    if "is_causal" in params:
        return {"is_causal": True}
    return None


@opaque
def attention(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, p: Packing, heads: int,
              scale: float | None = None, varlen: bool = False, causal: bool = False) -> torch.Tensor:
    """Self-attention of packed tokens within each sequence.

    q, k, v: [total, heads*head_dim] each; or k = v = None and q the fused [total, 3*heads*head_dim]
    projection (q | k | v along the last dimension). Returns [total, heads*head_dim]. With
    varlen=True (see varlen_available) one flash varlen call covers the whole batch; otherwise
    one fused SDPA call per length bucket.

    causal=True: each token attends to its sequence's tokens up to itself (in packed order, which
    is the original order). In a bucket the padded slots follow each row's real tokens, so SDPA's
    own causal mask alone keeps real queries off them. Plans made with first_position=True
    (query-only tokens) are not causal and are refused."""
    if causal and p.key_index is not None:
        raise ValueError("causal attention with query-only first positions is not supported")
    fused = k is None
    total = q.shape[0]
    width = q.shape[1] // 3 if fused else q.shape[1]
    d = width // heads
    if total == 0:
        return q.new_zeros((0, width))
    if not fused and not varlen and p.pad_index is not None:
        q, fused = torch.cat((q, k, v), 1), True  # one gather for q, k and v
    if varlen:
        from torch.nn.attention.varlen import varlen_attn

        if fused:
            q, k, v = q.view(total, 3, heads, d).unbind(1)
        q, k, v = (t.reshape(total, heads, d) for t in (q, k, v))
        if p.key_index is not None:
            k, v = k.index_select(0, p.key_index), v.index_select(0, p.key_index)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = varlen_attn(q, k, v, p.cu_seqlens(q.device), p.cu_seqlens(q.device, keys=True),
                          max(p.lengths), max(p.key_lengths), scale=scale, **(_varlen_causal() if causal else {}))
        return dynamic_tokens(out.reshape(total, width))
    if p.pad_index is not None:
        q = q.index_select(0, p.pad_index)  # [padded, 3 * width]: every bucket's rows, each padded to its length
    parts = []
    for b in p.buckets:
        if fused:
            qs, ks, vs = q[b.pstart:b.pend].reshape(b.rows, b.length, 3, heads, d).unbind(2)
        else:
            qs, ks, vs = (t[b.pstart:b.pend].reshape(b.rows, b.length, heads, d) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2),
                                           attn_mask=None if causal else b.key_mask, is_causal=causal, scale=scale)
        parts.append(o.transpose(1, 2).reshape(b.rows * b.length, width))
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return dynamic_tokens(out if p.unpad_index is None else out.index_select(0, p.unpad_index))
