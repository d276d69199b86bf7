"""Pure tensor primitives for running a Transformer encoder without work on padding.

The padded batch [B, S, ...] is *packed*: its real tokens (mask True) are gathered into one
[total, ...] tensor, every token-wise layer (projections, feed-forward, LayerNorm) runs on that,
and attention runs per sequence. Rows are packed in order of increasing length, each row's tokens
kept contiguous and in their original order, so that

- the rows of one length bucket are one contiguous slice of the packed tokens: attention pads
  only that slice to the bucket's own longest row (a gather) and runs fused SDPA with a key
  padding mask, or, where the device has it (CUDA flash varlen), runs on the slice as is;
- packing follows the mask, not an assumption about where the padding is: right, left and
  ragged masks (holes in the middle) all work, and rows with no real token simply vanish.

`unpack` scatters back to [B, S, H] with zeros at padding positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SlimError


def _opaque(fn):
    """Run `fn` outside torch.compile's graphs: the packing is data-dependent (lengths read from the
    mask), so compiled code is split around it and only the token-wise layers in between are
    compiled (their token dimension becomes dynamic), instead of recompiling for every batch."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def _dynamic_tokens(x: torch.Tensor) -> torch.Tensor:
    """Tell torch.compile the packed token dimension varies from call to call (no-op in eager)."""
    mark = getattr(getattr(torch, "_dynamo", None), "maybe_mark_dynamic", None)
    if mark is not None and x.dim() > 0:
        mark(x, 0)
    return x


@dataclass
class Bucket:
    """Rows of one attention call, whose tokens are the contiguous slice packed[start:end]."""

    start: int
    end: int
    rows: int
    length: int  # attention runs on [rows, heads, length, head_dim]
    pad_index: torch.Tensor | None  # [rows * length] index into packed[start:end]; None: no padding
    unpad_index: torch.Tensor | None  # [end - start] index into rows * length
    key_mask: torch.Tensor | None  # [rows, 1, 1, length] bool, True = a key to attend to


@dataclass
class Packing:
    batch: int
    seq: int
    total: int  # packed tokens (real tokens, plus query-only first positions, see plan)
    index: torch.Tensor | None  # [total] flat positions in batch*seq; None: no padding, identity
    buckets: list[Bucket]
    lengths: list[int]  # packed tokens per row, in packed (sorted) order; empty rows dropped
    key_lengths: list[int]  # real tokens (keys) per row, same order
    key_index: torch.Tensor | None = None  # [sum(key_lengths)] packed positions of the keys; None: all
    _cu: dict | None = None

    def cu_seqlens(self, device, keys: bool = False) -> torch.Tensor:
        """Cumulative lengths (int32, [rows + 1]) of the queries or the keys, for varlen kernels."""
        self._cu = self._cu or {}
        if keys not in self._cu:
            lens = torch.tensor([0] + (self.key_lengths if keys else self.lengths), dtype=torch.int32)
            self._cu[keys] = torch.cumsum(lens, 0, dtype=torch.int32).to(device)
        return self._cu[keys]


# ----------------------------------------------------------------------------- masks

@_opaque
def keep_from_attention_mask(mask: torch.Tensor | None, shape: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """A Hugging Face attention mask (1 = real token, 0 = padding) as a bool [B, S] keep-mask.

    None means no padding. Accepted: bool, integer or floating tensors of exactly `shape` whose
    values are all 0 or 1. Anything else raises SlimError (never a guess)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise SlimError(f"fast_transformer: attention_mask must be a tensor, got {type(mask).__name__}",
                        "pass a [batch, seq] tensor of 0/1 (1 = real token)")
    if tuple(mask.shape) != tuple(shape):
        raise SlimError(f"fast_transformer: attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(shape)}",
                        "pass a [batch, seq] padding mask of 0/1 with the input_ids' shape "
                        "(3-D/4-D custom attention masks are not supported by the packed path)")
    if mask.dtype == torch.bool:
        return mask.to(device)
    if not (mask.is_floating_point() or mask.dtype in _INTS):
        raise SlimError(f"fast_transformer: attention_mask of dtype {mask.dtype} is not supported",
                        "pass a bool, integer or float mask of 0/1")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise SlimError("fast_transformer: attention_mask holds values other than 0 and 1",
                        "pass 1 for real tokens and 0 for padding (additive float masks are not supported)")
    return (mask != 0).to(device)


@_opaque
def keep_from_key_padding_mask(mask: torch.Tensor | None, shape: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """nn.TransformerEncoder's src_key_padding_mask (True / -inf = padding) as a bool keep-mask."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SlimError(f"fast_transformer: src_key_padding_mask is {got}, expected shape {tuple(shape)}",
                        "pass a [batch, seq] mask, True (or -inf) at padding")
    if mask.dtype == torch.bool:
        return (~mask).to(device)
    if mask.is_floating_point():
        if mask.numel() and not bool(((mask == 0) | (mask == float("-inf"))).all()):
            raise SlimError("fast_transformer: a float src_key_padding_mask must hold only 0 (keep) and -inf (pad)",
                            "pass a bool mask (True = pad); other additive values are not supported by the packed path")
        return (mask == 0).to(device)
    raise SlimError(f"fast_transformer: src_key_padding_mask of dtype {mask.dtype} is not supported",
                    "pass a bool mask, True at padding")


_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


# ----------------------------------------------------------------------------- plan

def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


ALIGN = 16  # attention pads each bucket to a multiple of this: PyTorch's CPU flash kernel runs
# lengths that are multiples of 16 up to 3-4x faster than their neighbours (e.g. 96 vs 93)


@_opaque
def plan(keep: torch.Tensor | None, batch: int, seq: int, device: torch.device, multiple: int = 16,
         first_position: bool = False, align: int = ALIGN) -> Packing:
    """How to pack a batch with keep-mask `keep` ([B, S] bool, True = real; None = all real).

    Rows are sorted by length; rows whose lengths round up to the same multiple of `multiple`
    share one attention bucket, padded (by a gather, with a key mask) only to that bucket's longest
    row rounded up to a multiple of `align`.

    first_position=True also computes position 0 of rows where it is padding (left padding) as a
    query-only token: it attends to the row's real tokens and nothing attends to it, exactly as in
    the padded model, so heads that read the first position (BERT's pooler, DistilBERT's
    classifier) see what the original computes there. Rows with no real token stay empty."""
    full = keep is None or bool(keep.all())
    if full:
        real_l, extra_l = [seq] * batch, [False] * batch
    else:
        real = keep.sum(1)
        compute = keep
        if first_position:
            extra_rows = ~keep[:, 0] & (real > 0)
            compute = keep.clone()
            compute[:, 0] |= extra_rows
            extra_l = extra_rows.tolist()
        else:
            extra_l = [False] * batch
        real_l = real.tolist()
    order = sorted((r for r in range(batch) if real_l[r] > 0), key=lambda r: real_l[r] + extra_l[r])  # stable
    lens = [real_l[r] + extra_l[r] for r in order]
    key_lens = [real_l[r] for r in order]
    extras = [bool(extra_l[r]) for r in order]
    total = sum(lens)
    if total == 0:
        return Packing(batch, seq, 0, torch.zeros(0, dtype=torch.long, device=device), [], [], [])
    index = key_index = None  # full: packed order is the batch's own order
    if not full:
        order_t = torch.tensor(order, dtype=torch.long, device=device)
        flat = compute.index_select(0, order_t).reshape(-1).nonzero().squeeze(1)  # row-major: rows contiguous
        index = order_t[flat // seq] * seq + flat % seq
        if any(extras):  # the query-only tokens are each row's first packed token
            offs = torch.cumsum(torch.tensor([0] + lens[:-1], dtype=torch.long), 0)
            is_key = torch.ones(total, dtype=torch.bool)
            is_key[offs[torch.tensor(extras)]] = False
            key_index = is_key.nonzero().squeeze(1).to(device)

    buckets: list[Bucket] = []
    multiple, align = max(1, int(multiple)), max(1, int(align))
    i, start = 0, 0
    while i < len(lens):
        j = i
        while j < len(lens) and _ceil_div(lens[j], multiple) == _ceil_div(lens[i], multiple):
            j += 1
        group, longest = lens[i:j], lens[j - 1]
        n, length = sum(group), _ceil_div(longest, align) * align
        if group[0] == length and not any(extras[i:j]):  # the slice is already [rows, length]
            buckets.append(Bucket(start, start + n, j - i, length, None, None, None))
        else:
            g = torch.tensor(group, dtype=torch.long)
            offs = torch.cumsum(g, 0) - g
            t = torch.arange(length)
            valid = t[None, :] < g[:, None]
            pad_index = torch.where(valid, offs[:, None] + t[None, :], offs[:, None]).reshape(-1)
            unpad_index = valid.reshape(-1).nonzero().squeeze(1)
            key_ok = valid.clone()
            key_ok[:, 0] &= ~torch.tensor(extras[i:j])
            mask = None if bool(key_ok.all()) else key_ok[:, None, None, :].to(device)
            if bool(valid.all()):
                pad_index = unpad_index = None
            else:
                pad_index, unpad_index = pad_index.to(device), unpad_index.to(device)
            buckets.append(Bucket(start, start + n, j - i, length, pad_index, unpad_index, mask))
        start += n
        i = j
    return Packing(batch, seq, total, index, buckets, lens, key_lens, key_index)


# ----------------------------------------------------------------------------- pack / unpack

@_opaque
def pack(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """[B, S, ...] -> [total, ...] (the real tokens, in packed order)."""
    flat = x.reshape(p.batch * p.seq, *x.shape[2:])
    return _dynamic_tokens(flat if p.index is None else flat[p.index])


@_opaque
def unpack(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """[total, ...] -> [B, S, ...], zeros at padding positions."""
    if p.index is None:
        return x.reshape(p.batch, p.seq, *x.shape[1:])
    out = x.new_zeros((p.batch * p.seq, *x.shape[1:]))
    out.index_copy_(0, p.index, x)
    return out.view(p.batch, p.seq, *x.shape[1:])


# ----------------------------------------------------------------------------- attention

def varlen_available(q: torch.Tensor, head_dim: int) -> bool:
    """CUDA flash varlen attention (torch.nn.attention.varlen), feature-detected: CUDA tensors,
    fp16/bf16, a head size flash supports, and the module present in this torch."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or head_dim % 8 or head_dim > 256:
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


@_opaque
def attention(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, p: Packing, heads: int,
              scale: float | None = None, varlen: bool = False) -> torch.Tensor:
    """Self-attention of packed tokens within each sequence.

    q, k, v: [total, heads*head_dim] each; or k = v = None and q the fused [total, 3*heads*head_dim]
    projection (q | k | v along the last dimension). Returns [total, heads*head_dim]. With
    varlen=True (see varlen_available) one flash varlen call covers the whole batch; otherwise
    one fused SDPA call per length bucket."""
    fused = k is None
    total = q.shape[0]
    width = q.shape[1] // 3 if fused else q.shape[1]
    d = width // heads
    if total == 0:
        return q.new_zeros((0, width))
    if fused:
        qkv = q.view(total, 3, heads, d)
    else:
        qkv = None
        q, k, v = (t.reshape(total, heads, d) for t in (q, k, v))
    if varlen:
        from torch.nn.attention.varlen import varlen_attn

        if fused:
            q, k, v = qkv.unbind(1)
        if p.key_index is not None:
            k, v = k[p.key_index], v[p.key_index]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = varlen_attn(q, k, v, p.cu_seqlens(q.device), p.cu_seqlens(q.device, keys=True),
                          max(p.lengths), max(p.key_lengths), scale=scale)
        return _dynamic_tokens(out.reshape(total, width))
    parts = []
    for b in p.buckets:
        if fused:
            s = qkv[b.start:b.end]
            if b.pad_index is not None:
                s = s[b.pad_index]
            qs, ks, vs = s.view(b.rows, b.length, 3, heads, d).unbind(2)
        else:
            qs, ks, vs = q[b.start:b.end], k[b.start:b.end], v[b.start:b.end]
            if b.pad_index is not None:
                qs, ks, vs = qs[b.pad_index], ks[b.pad_index], vs[b.pad_index]
            qs, ks, vs = (t.view(b.rows, b.length, heads, d) for t in (qs, ks, vs))
        o = F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2),
                                           attn_mask=b.key_mask, scale=scale)
        o = o.transpose(1, 2).reshape(b.rows * b.length, width)
        if b.unpad_index is not None:
            o = o[b.unpad_index]
        parts.append(o)
    return _dynamic_tokens(parts[0] if len(parts) == 1 else torch.cat(parts))
