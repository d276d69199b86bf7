"""Text generation's options (`GenerationConfig`, what `torchslim optimize --task text-generation` and
`optimize_generation` take) and its typed result row (`GenRecipeResult`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SlimError
from ..results import RecipeResult
from ..search.config import Budget


# Minutes for the baseline and the recipes (then the final interleaved timing): compiling one decode
# graph takes 1-3 minutes on 2 cores, so the forward search's 1.5 would stop after the first recipe;
# 10 minutes reach the default list's compiled recipes on SmolLM2-135M (2-core CPUs).
DEFAULT_TIME_BUDGET_MIN = 10.0
# What --objective ranks the recipes that kept quality and decode faster than the baseline by.
OBJECTIVES = {"latency": "decode tokens/s at --batch-size", "throughput": "decode tokens/s at --large-batch (whole batch)",
              "size": "smallest saved model", "memory": "lowest peak memory while generating"}


@dataclass(frozen=True)
class GenerationConfig:
    prompt_len: int = 128
    new_tokens: int = 64
    batch_size: int = 1
    large_batch: int = 4  # also timed at this batch size (0: not)
    prompts: str | None = None  # file with one prompt per line; None: built-in real prompts
    max_ppl_increase: float = 5.0  # percent
    ppl_tokens: int = 512
    agreement_prompts: int = 4
    agreement_tokens: int = 32
    recipes: tuple[str, ...] | None = None
    rounds: int = 5
    objective: str = "latency"  # OBJECTIVES
    time_budget: float | None = DEFAULT_TIME_BUDGET_MIN  # minutes; 0 or None: no limit
    exhaustive: bool = False  # every recipe (the extended list too), no time budget
    device: str = "cpu"
    threads: int | None = None
    out: str | None = None
    save_model: bool = True
    debug: bool = False

    def __post_init__(self):
        if self.new_tokens < 1:
            raise SlimError(f"--new-tokens must be >= 1 (got {self.new_tokens})", "e.g. --new-tokens 64")
        if self.prompt_len < 1:
            raise SlimError(f"--prompt-len must be >= 1 (got {self.prompt_len})", "e.g. --prompt-len 128")
        if self.batch_size < 1 or self.large_batch < 0:
            raise SlimError("--batch-size must be >= 1 and --large-batch >= 0", "e.g. --batch-size 1 --large-batch 4")
        if self.max_ppl_increase < 0:
            raise SlimError("--max-ppl-increase must be >= 0 (percent)", "e.g. --max-ppl-increase 5")
        if self.rounds < 1:
            raise SlimError("--rounds must be >= 1", "e.g. --rounds 5")
        if self.objective not in OBJECTIVES:
            raise SlimError(f"unknown objective '{self.objective}'", f"use one of {', '.join(OBJECTIVES)}")
        if self.objective == "throughput" and not self.large_batch:
            raise SlimError("--objective throughput ranks by decode tokens/s at --large-batch, and --large-batch is 0",
                            "pass --large-batch N (e.g. 4), or --objective latency")
        if self.time_budget is not None and not self.time_budget >= 0:
            raise SlimError("--time-budget must be >= 0 minutes", f"e.g. --time-budget {DEFAULT_TIME_BUDGET_MIN:g}; 0 means no limit")

    @property
    def budget_s(self) -> float | None:
        """Seconds for the baseline and the recipes, or None (no limit, or --exhaustive): Budget's rule."""
        return Budget.of(self).seconds


@dataclass
class GenRecipeResult(RecipeResult):
    """A RecipeResult with the generation figures under plain names (batch `batch_size`)."""

    targets: str = ""  # the part the recipe is meant to speed up: prefill, decode, both
    speeds_up: str = ""  # the part it measurably sped up here: prefill, decode, both, neither
    ttft_ms: float | None = None
    decode_ms_per_token: float | None = None
    decode_tokens_per_s: float | None = None
    ttft_speedup: float | None = None
    decode_speedup: float | None = None
    perplexity: float | None = None
    ppl_increase_pct: float | None = None
    greedy_agreement: float | None = None
    fidelity: dict | None = None  # quality.agreement(): greedy agreement with the baseline's tokens
    generation: dict | None = None  # measure.summary() at the asked batch size
    large_batch: dict | None = None  # the same at the larger batch size
