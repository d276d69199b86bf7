"""Generation timing: time to first token and per-token decode, apart, interleaved round-robin with
rotated order (as torchslim.measure.interleaved), medians with order-statistic 95% CIs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import measure
from .runner import Generate, GenTrace


@dataclass
class GenSamples:
    ttft_ms: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)  # whole generations (for end-to-end tokens/s)


def first_call(gen: Generate, ids: torch.Tensor, new_tokens: int) -> tuple[float, GenTrace]:
    """The first generation (compilation included): (milliseconds, trace)."""
    t0 = time.perf_counter()
    tr = gen(ids, new_tokens)
    return (time.perf_counter() - t0) * 1000.0, tr


def interleaved(gens: dict[str, Generate], ids: torch.Tensor, new_tokens: int, rounds: int = 5,
                warmup: int = 1, on_round=None) -> dict[str, GenSamples]:
    names = list(gens)
    for name in names:
        for _ in range(warmup):
            gens[name](ids, new_tokens)
    out = {n: GenSamples() for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            tr = gens[name](ids, new_tokens)
            s = out[name]
            s.wall_s.append(time.perf_counter() - t0)
            s.ttft_ms.append(tr.ttft_ms)
            s.step_ms.extend(tr.step_ms)
        if on_round:
            on_round(r)
    return out


def summary(s: GenSamples, batch_size: int, new_tokens: int) -> dict:
    """The plain-named figures of one contestant: ttft_ms, decode_ms_per_token, decode_tokens_per_s, ..."""
    ttft = measure.summarize(s.ttft_ms)
    dec = measure.summarize(s.step_ms) if s.step_ms else None
    out = {
        "batch_size": batch_size,
        "new_tokens": new_tokens,
        "ttft_ms": ttft.median_ms,
        "ttft_ci95_ms": list(ttft.ci95_ms),
        "decode_ms_per_token": dec.median_ms if dec else None,
        "decode_ci95_ms": list(dec.ci95_ms) if dec else None,
        # tokens per second over the whole batch (batch_size sequences advance one token per step)
        "decode_tokens_per_s": batch_size * 1000.0 / dec.median_ms if dec else None,
        "end_to_end_tokens_per_s": batch_size * new_tokens / (sorted(s.wall_s)[len(s.wall_s) // 2]),
        "generations": len(s.ttft_ms),
        "decode_steps": len(s.step_ms),
    }
    return out
