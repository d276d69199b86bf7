"""What the generation peer runners share: the job (token ids every engine gets), the timing summary and
the perplexity loop. Standard library + numpy only: it is imported by runners in other venvs
(llama-cpp-python's, OpenVINO GenAI's), which have no torchslim."""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time


def read_job(path: str) -> dict:
    """The job written by generation.py: prompt_ids (one prompt, batch 1), ppl_ids, window,
    new_tokens, threads, rounds, warmup, eos (ids suppressed for the first new_tokens)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def emit(result: dict) -> None:
    """The runner's result: one JSON line on stdout, marked so that library chatter cannot be mistaken for it."""
    result["load_average_end"] = list(os.getloadavg())
    sys.stdout.write("GENPEER-RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def summarize(ttft_ms: list[float], step_ms: list[float], wall_s: list[float], new_tokens: int) -> dict:
    """Medians of TTFT (one per generation) and of every decode step (all generations pooled), as
    torchslim.generation.measure.summary names them."""
    dec = statistics.median(step_ms) if step_ms else None
    return {
        "ttft_ms": statistics.median(ttft_ms),
        "ttft_all_ms": [round(t, 2) for t in ttft_ms],
        "decode_ms_per_token": dec,
        "decode_p10_p90_ms": _p10_p90(step_ms),
        "decode_tokens_per_s": 1000.0 / dec if dec else None,
        "end_to_end_tokens_per_s": new_tokens / statistics.median(wall_s),
        "generations": len(ttft_ms),
        "decode_steps": len(step_ms),
    }


def _p10_p90(xs: list[float]) -> list[float] | None:
    if len(xs) < 10:
        return None
    s = sorted(xs)
    return [s[len(s) // 10], s[(9 * len(s)) // 10]]


def timed_rounds(generate, prompt: list[int], new_tokens: int, rounds: int, warmup: int) -> tuple[dict, list[int]]:
    """Run `generate(prompt, new_tokens) -> (tokens, ttft_ms, step_ms)` warmup + rounds times:
    (summary, the tokens of the first timed generation)."""
    for _ in range(warmup):
        generate(prompt, new_tokens)
    ttft, steps, wall, first = [], [], [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        toks, t_ms, s_ms = generate(prompt, new_tokens)
        wall.append(time.perf_counter() - t0)
        ttft.append(t_ms)
        steps.extend(s_ms)
        first = first if first is not None else list(toks)
    return summarize(ttft, steps, wall, new_tokens), first


def perplexity(logits_of, ids: list[int], window: int) -> float:
    """exp(mean next-token NLL) over `ids` in independent windows, as torchslim.generation.quality.perplexity:
    `logits_of(chunk)` returns the [len(chunk), vocab] logits (numpy) of a fresh pass over `chunk`."""
    import numpy as np

    nll, count = 0.0, 0
    for s in range(0, len(ids) - 1, window):
        chunk = ids[s:s + window]
        if len(chunk) < 2:
            break
        logits = np.asarray(logits_of(chunk), dtype=np.float64)[:-1]
        m = logits.max(axis=-1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1)))
        target = logits[np.arange(len(chunk) - 1), np.asarray(chunk[1:])]
        nll += float((logz - target).sum())
        count += len(chunk) - 1
    return math.exp(nll / count) if count and math.isfinite(nll) else math.inf
