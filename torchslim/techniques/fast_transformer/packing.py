"""Packing core of fast_transformer: gather a padded batch's real tokens into one [total, ...] tensor,
plan length buckets for attention, run attention per sequence, scatter back (zeros at padding)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import SlimError


def opaque(fn):
    """Run `fn` outside torch.compile's graphs: the packing is data-dependent (lengths read from the
    mask), so compiled code is split around it and only the token-wise layers in between are
    compiled (their token dimension becomes dynamic), instead of recompiling for every batch."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def dynamic_tokens(x: torch.Tensor) -> torch.Tensor:
    """Tell torch.compile the packed token dimension varies from call to call (no-op in eager)."""
    mark = getattr(getattr(torch, "_dynamo", None), "maybe_mark_dynamic", None)
    if mark is not None and x.dim() > 0:
        mark(x, 0)
    return x


@dataclass
class Bucket:
    """One attention call: `rows` sequences padded to `length`, stored at padded[pstart:pend]
    (see Packing.pad_index); their real tokens are packed[start:end]."""

    start: int
    end: int
    pstart: int
    pend: int
    rows: int
    length: int  # attention runs on [rows, heads, length, head_dim]
    key_mask: torch.Tensor | None  # [rows, 1, 1, length] bool, True = a key to attend to; None: all


@dataclass
class Packing:
    """How a padded batch [B, S, ...] is packed. Rows are packed in order of increasing length, each
    row's tokens contiguous and in their original order, so a bucket (rows of similar length) is one
    contiguous slice: one gather lays every bucket out padded, one gather brings the results back.
    Packing follows the mask (right, left and ragged padding); rows with no real token vanish."""

    batch: int
    seq: int
    total: int  # packed tokens (real tokens, plus query-only first positions, see plan)
    index: torch.Tensor | None  # [total] flat positions in batch*seq; None: no padding, identity
    buckets: list[Bucket]
    lengths: list[int]  # packed tokens per row, in packed (sorted) order; empty rows dropped
    key_lengths: list[int]  # real tokens (keys) per row, same order
    key_index: torch.Tensor | None = None  # [sum(key_lengths)] packed positions of the keys; None: all
    pad_index: torch.Tensor | None = None  # [padded] packed position of each bucket slot; None: identity
    unpad_index: torch.Tensor | None = None  # [total] slot of each packed token; None: identity
    _cu: dict | None = None

    def cu_seqlens(self, device, keys: bool = False) -> torch.Tensor:
        """Cumulative lengths (int32, [rows + 1]) of the queries or the keys, for varlen kernels."""
        self._cu = self._cu or {}
        if keys not in self._cu:
            lens = torch.tensor([0] + (self.key_lengths if keys else self.lengths), dtype=torch.int32)
            self._cu[keys] = torch.cumsum(lens, 0, dtype=torch.int32).to(device)
        return self._cu[keys]


# ----------------------------------------------------------------------------- masks

_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@opaque
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


@opaque
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


# ----------------------------------------------------------------------------- plan

def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


ALIGN = 16  # attention pads each bucket to a multiple of this: PyTorch's CPU flash kernel runs
# lengths that are multiples of 16 up to 3-4x faster than their neighbours (e.g. 96 vs 93)


def partition(lengths: list[int], counts: list[int], k: int) -> list[int]:
    """Split sorted distinct lengths into at most k contiguous groups, minimising the padded
    attention work sum(rows * group_max_length**2). Returns each group's end (exclusive)."""
    m = len(lengths)
    k = max(1, min(k, m))
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (m + 1) for _ in range(k + 1)]
    cut = [[0] * (m + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for g in range(1, k + 1):
        for j in range(1, m + 1):
            for i in range(g - 1, j):
                c = best[g - 1][i] + (prefix[j] - prefix[i]) * lengths[j - 1] ** 2
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, k + 1), key=lambda n: best[n][m])
    ends, j = [], m
    while g > 0:
        ends.append(j)
        j, g = cut[g][j], g - 1
    return ends[::-1]


@opaque
def plan(keep: torch.Tensor | None, batch: int, seq: int, device: torch.device, max_buckets: int = 4,
         first_position: bool = False, align: int = ALIGN) -> Packing:
    """How to pack a batch with keep-mask `keep` ([B, S] bool, True = real; None = all real).

    Rows are sorted by length and split into at most `max_buckets` groups of similar length (the
    split that minimises padded attention work); each group is one attention call, padded (by a
    gather, with a key mask) only to its longest row rounded up to a multiple of `align`.

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

    align = max(1, int(align))
    aligned = [_ceil_div(n, align) * align for n in lens]
    distinct = sorted(set(aligned))
    counts = [aligned.count(a) for a in distinct]
    buckets: list[Bucket] = []
    pads, unpads = [], []
    needs_gather = False
    i = start = pstart = 0
    for end in partition(distinct, counts, int(max_buckets)):
        length = distinct[end - 1]
        j = i
        while j < len(lens) and aligned[j] <= length:
            j += 1
        g = torch.tensor(lens[i:j], dtype=torch.long)
        n, rows = int(g.sum()), j - i
        t = torch.arange(length)
        valid = t[None, :] < g[:, None]
        offs = start + torch.cumsum(g, 0) - g
        pads.append(torch.where(valid, offs[:, None] + t[None, :], offs[:, None]).reshape(-1))
        unpads.append(pstart + valid.reshape(-1).nonzero().squeeze(1))
        needs_gather |= not bool(valid.all())
        key_ok = valid.clone()
        key_ok[:, 0] &= ~torch.tensor(extras[i:j])
        mask = None if bool(key_ok.all()) else key_ok[:, None, None, :].to(device)
        buckets.append(Bucket(start, start + n, pstart, pstart + rows * length, rows, length, mask))
        start, pstart, i = start + n, pstart + rows * length, j
    pad_index = unpad_index = None
    if needs_gather:  # one gather into all buckets' padded slots, one gather back
        pad_index, unpad_index = torch.cat(pads).to(device), torch.cat(unpads).to(device)
    return Packing(batch, seq, total, index, buckets, lens, key_lens, key_index, pad_index, unpad_index)


# ----------------------------------------------------------------------------- pack / unpack

@opaque
def pack(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """[B, S, ...] -> [total, ...] (the real tokens, in packed order)."""
    flat = x.reshape(p.batch * p.seq, *x.shape[2:])
    return dynamic_tokens(flat if p.index is None else flat.index_select(0, p.index))


@opaque
def unpack(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """[total, ...] -> [B, S, ...], zeros at padding positions."""
    if p.index is None:
        return x.reshape(p.batch, p.seq, *x.shape[1:])
    out = x.new_zeros((p.batch * p.seq, *x.shape[1:]))
    out.index_copy_(0, p.index, x)
    return out.view(p.batch, p.seq, *x.shape[1:])
