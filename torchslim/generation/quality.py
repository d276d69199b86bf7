"""Quality of a generation recipe on text: perplexity on held-out real English (a fixed slice of
CPython's pydoc_data.topics), greedy agreement with FP32, and the garbage checks."""
from __future__ import annotations

import math
import os

import torch

from ..errors import SlimError

# Real prompts: instructions and openings of the kind a small chat model gets.
PROMPTS = (
    "Explain in two sentences why the sky is blue.",
    "Write a short email to a colleague asking to move our meeting to Thursday afternoon.",
    "The history of the printing press begins in",
    "List three tips for writing readable Python code.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "Give me a simple recipe for pancakes.",
    "The most important thing to remember when learning a new language is",
)
PPL_TOPICS = 24  # first topics (sorted) of pydoc_data.topics: the held-out text
COLLAPSE_RATIO = 0.5  # distinct-token fraction below this share of the baseline's = repetition collapse
BLOWN_UP = 2.0  # perplexity above this multiple of the baseline's = garbage, whatever the threshold


def heldout_text() -> str:
    """A fixed slice of CPython's documentation topics (real English prose and examples)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)[:PPL_TOPICS])


CALIBRATION_TOPICS = slice(40, 60)  # sorted topics, disjoint from the held-out ones: SmoothQuant's calibration text


def calibration(tokenizer, tokens: int = 512, device="cpu") -> list[dict]:
    """Model keyword arguments for one pass over real English that perplexity never sees."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics)[CALIBRATION_TOPICS])
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :tokens]
    return [{"input_ids": ids.to(device), "use_cache": False}]


def load_prompts(path: str | None) -> list[str]:
    """Prompts from a file (one per non-blank line), or the built-in real prompts."""
    if path is None:
        return list(PROMPTS)
    if not os.path.isfile(path):
        raise SlimError(f"prompts file '{path}' does not exist", "give a text file with one prompt per line")
    with open(path, encoding="utf-8") as f:
        prompts = [ln.strip() for ln in f if ln.strip()]
    if not prompts:
        raise SlimError(f"prompts file '{path}' has no prompts", "write one prompt per line")
    return prompts


def text_tokens(tokenizer, tokens: int) -> torch.Tensor:
    """The first `tokens` tokens of the held-out text, [1, tokens]."""
    ids = tokenizer(heldout_text(), return_tensors="pt", add_special_tokens=False).input_ids[:, :tokens]
    if ids.shape[1] < tokens:
        raise SlimError(f"the held-out text has only {ids.shape[1]} tokens", f"use fewer than {tokens} perplexity tokens")
    return ids


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int = 256) -> float:
    """exp(mean next-token negative log-likelihood) over `ids` [1, T], in independent windows."""
    nll, count = 0.0, 0
    for s in range(0, ids.shape[1] - 1, window):
        chunk = ids[:, s:s + window]
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll -= logp.gather(-1, chunk[:, 1:, None]).sum().item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count) if count and math.isfinite(nll) else math.inf


def agreement(tokens: list[torch.Tensor], reference: list[torch.Tensor]) -> dict:
    """Greedy-token agreement with the reference generations: the fraction of positions with the same
    token, and the mean length of the identical prefix (one flipped token changes all after it)."""
    same, total, prefix = 0, 0, []
    for t, r in zip(tokens, reference):
        t, r = t.flatten(), r.flatten()
        n = min(len(t), len(r))
        eq = (t[:n] == r[:n])
        same += int(eq.sum())
        total += n
        diff = (~eq).nonzero()
        prefix.append(int(diff[0]) if len(diff) else n)
    return {"greedy_agreement": same / total if total else 1.0, "mean_identical_prefix": sum(prefix) / max(1, len(prefix))}


def distinct_fraction(tokens: list[torch.Tensor]) -> float:
    """Mean fraction of distinct tokens per generation (low: the text repeats itself)."""
    fr = [len(set(t.flatten().tolist())) / max(1, t.numel()) for t in tokens]
    return sum(fr) / max(1, len(fr))


def garbage(first_logits: torch.Tensor | None, ppl: float, base_ppl: float, distinct: float, base_distinct: float) -> str | None:
    """The reason a recipe's text is garbage, or None."""
    if first_logits is not None and not torch.isfinite(first_logits).all():
        return "NaN or Inf in the logits"
    if not math.isfinite(ppl):
        return "perplexity is not finite"
    if ppl > BLOWN_UP * base_ppl:
        return f"perplexity blown up ({ppl:.2f} vs {base_ppl:.2f} for FP32)"
    if distinct < COLLAPSE_RATIO * base_distinct:
        return f"repetition collapse (distinct tokens {distinct:.0%} vs {base_distinct:.0%} for FP32)"
    return None
