"""Cost that scales with the model: from one measured prefill and a few decode steps of the baseline,
the seconds each phase of the generation search will take (a recipe's first call and quality checks,
the final interleaved timing), and the timing rounds, timed new tokens and agreement checks sized down
so the whole search fits --time-budget. Perplexity is scored on a fixed, stated number of tokens (never
sized: perplexities stay comparable across model sizes); its cost is stated. Pure functions on numbers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

PROBE_TOKENS = 6  # tokens of the probe generation, after a short warm-up one (its first step is dropped too)
FINAL_SHARE = 0.25  # the final interleaved timing: at most this share of --time-budget
CHECK_SHARE = 0.08  # one recipe's first call + agreement + perplexity: at most this share (about 12 recipes)
MODELS_TIMED = 4  # models expected in the final timing: the baseline and three kept recipes (an estimate)
BATCH_STEP = 0.15  # a decode step at batch b costs (1 + BATCH_STEP * (b - 1)) steps at batch 1 (memory-bound)
AGREE_PROMPT_TOKENS = 24  # the built-in prompts' typical length in tokens
# (field, smallest value): shrunk in this order, each halved (rounds: minus one; large_batch: to 0, the
# larger batch not timed) until the search fits; --objective throughput keeps its larger batch (KEEP_BATCH)
SHRINK = (("rounds", 3), ("new_tokens", 32), ("agreement_tokens", 16), ("agreement_prompts", 2), ("large_batch", 0),
          ("rounds", 2), ("new_tokens", 16))
KEEP_BATCH = tuple(s for s in SHRINK if s[0] != "large_batch")
SIZED = ("new_tokens", "rounds", "agreement_prompts", "agreement_tokens", "large_batch")


@dataclass(frozen=True)
class Knobs:
    """What the search's cost depends on (GenerationConfig's fields of the same names)."""

    new_tokens: int
    rounds: int
    agreement_prompts: int
    agreement_tokens: int
    ppl_tokens: int
    prompt_len: int
    large_batch: int = 0
    batch_size: int = 1


@dataclass(frozen=True)
class Speed:
    """The baseline measured once: a prompt of `prompt_len` tokens at batch 1, one decode step at batch 1."""

    prefill_s: float
    step_s: float


@dataclass
class Sizing:
    asked: dict  # the knobs as configured
    sized: dict  # the knobs the search uses (never larger than asked)
    changed: list = field(default_factory=list)  # the names of the knobs sized down
    predicted_s: dict = field(default_factory=dict)  # per phase, with the sized knobs
    reserve_s: float = 0.0  # held back from the recipes' budget for the final timing
    fits: bool = True
    why: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def generation_s(speed: Speed, k: Knobs, prompt_tokens: int, new_tokens: int, batch: int = 1) -> float:
    """One greedy generation: the prompt pass (linear in tokens x rows) and `new_tokens` decode steps."""
    prefill = speed.prefill_s * batch * prompt_tokens / max(1, k.prompt_len)
    return prefill + new_tokens * speed.step_s * (1.0 + BATCH_STEP * (batch - 1))


def ppl_s(speed: Speed, k: Knobs) -> float:
    """Scoring `ppl_tokens` tokens: forward passes over them (prompt-pass speed, linear in tokens)."""
    return speed.prefill_s * k.ppl_tokens / max(1, k.prompt_len)


def check_s(speed: Speed, k: Knobs) -> float:
    """One recipe's first call (compilation not included) + greedy agreement + perplexity."""
    return (generation_s(speed, k, k.prompt_len, k.new_tokens, k.batch_size)
            + k.agreement_prompts * generation_s(speed, k, AGREE_PROMPT_TOKENS, k.agreement_tokens)
            + ppl_s(speed, k))


def final_s(speed: Speed, k: Knobs, models: int = MODELS_TIMED) -> float:
    """The final interleaved timing of `models` models: a warm-up + `rounds` generations at the asked batch,
    one more for the peak-memory measurement, and a warm-up + max(2, rounds // 2) at --large-batch."""
    one = generation_s(speed, k, k.prompt_len, k.new_tokens, k.batch_size)
    total = (k.rounds + 2) * one
    if k.large_batch and k.large_batch != k.batch_size:
        total += (max(2, k.rounds // 2) + 1) * generation_s(speed, k, k.prompt_len, k.new_tokens, k.large_batch)
    return models * total


def predict(speed: Speed, k: Knobs, models: int = MODELS_TIMED) -> dict:
    """Seconds per phase (the baseline's speed for every model: an upper bound for recipes that are faster)."""
    return {"decode_step_s": speed.step_s, "prefill_s": speed.prefill_s,
            "baseline_checks_s": round(check_s(speed, k), 2), "per_recipe_checks_s": round(check_s(speed, k), 2),
            "perplexity_s": round(ppl_s(speed, k), 2), "final_timing_s": round(final_s(speed, k, models), 2),
            "final_timing_per_model_s": round(final_s(speed, k, 1), 2), "models_timed": models}


def size(speed: Speed, asked: Knobs, budget_s: float | None, models: int = MODELS_TIMED, shrink=SHRINK) -> Sizing:
    """The knobs sized down (SHRINK order, never below its floors, never above what was asked) until the
    final timing takes at most FINAL_SHARE of `budget_s` and one recipe's checks at most CHECK_SHARE.
    Without a budget nothing is sized (the predictions are still made)."""
    k = asked
    if budget_s:
        def over(kn: Knobs) -> bool:
            return final_s(speed, kn, models) > FINAL_SHARE * budget_s or check_s(speed, kn) > CHECK_SHARE * budget_s

        for name, floor in shrink:
            while over(k) and getattr(k, name) > floor:
                v = getattr(k, name)
                k = replace(k, **{name: max(floor, v - 1 if name == "rounds" else 0 if name == "large_batch" else v // 2)})
    pred = predict(speed, k, models)
    changed = [n for n in SIZED if getattr(k, n) != getattr(asked, n)]
    fits = not budget_s or (pred["final_timing_s"] <= FINAL_SHARE * budget_s and pred["per_recipe_checks_s"] <= CHECK_SHARE * budget_s)
    reserve = min(pred["final_timing_s"], 0.5 * budget_s) if budget_s else 0.0
    step = f"one decode step {1000 * speed.step_s:.0f} ms, a {asked.prompt_len}-token prompt {1000 * speed.prefill_s:.0f} ms"
    if not budget_s:
        why = f"{step}; no time budget: nothing sized"
    elif not changed:
        why = (f"{step}: the asked settings fit the {budget_s / 60:g}-minute budget (final timing ~{pred['final_timing_s']:.0f} s, "
               f"~{pred['per_recipe_checks_s']:.0f} s of checks a recipe)")
    else:
        was = ", ".join(f"{n} {getattr(asked, n)}->{getattr(k, n)}" for n in changed)
        why = (f"{step}: {was} so the final timing (~{pred['final_timing_s']:.0f} s for {models} models) stays within "
               f"{FINAL_SHARE:.0%} and one recipe's checks (~{pred['per_recipe_checks_s']:.0f} s) within {CHECK_SHARE:.0%} "
               f"of the {budget_s / 60:g}-minute budget" + ("" if fits else "; even the smallest settings do not fit it"))
    why += (f"; perplexity on a fixed {asked.ppl_tokens} tokens (not sized, comparable across models): "
            f"~{pred['perplexity_s']:.0f} s a recipe")
    if budget_s:
        why += f"; {reserve:.0f} s of the budget held back for the final timing"
    return Sizing(asked=asdict(asked), sized=asdict(k), changed=changed, predicted_s=pred, reserve_s=round(reserve, 1),
                  fits=fits, why=why)


def speed_from_trace(ttft_ms: float, step_ms: list[float]) -> Speed:
    """A Speed from a probe generation's trace: its prompt pass and the median of its decode steps after the first."""
    steps = sorted(step_ms[1:] or step_ms)
    return Speed(prefill_s=ttft_ms / 1000.0, step_s=(steps[len(steps) // 2] if steps else ttft_ms) / 1000.0)


def eta_text(left_s: float | None, sizing: Sizing, models: int) -> str:
    """' | ETA ~N s' for the progress bar: the budget left for recipes, then the final timing of the
    `models` kept so far (the baseline's speed each: an upper bound)."""
    if left_s is None:
        return ""
    final = sizing.predicted_s["final_timing_per_model_s"] * models
    return f" | ETA ~{left_s + final:.0f} s (final timing of {models} models ~{final:.0f} s)"
