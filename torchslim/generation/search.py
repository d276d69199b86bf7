"""`optimize` for text generation: try generation recipes on a causal LM, validate them on text, time
prefill and decode interleaved against the model's own FP32 eager generate(), choose, save."""
from __future__ import annotations

import datetime
import os
import time
import traceback
from dataclasses import asdict, dataclass, field, replace

import torch

from .. import device as dev
from .. import measure as tmeasure
from ..errors import NotApplicable, SlimError, first_line
from ..fileio import write_json, write_text
from ..progress import bar as progress_bar
from ..recipes import Recipe, apply
from ..results import RecipeResult, RunResult, kept_on_stop
from ..search.config import Budget
from ..search.loop import skip_reason
from ..techniques import Context, handler
from ..techniques.lm_decode import LMDecodeConfig
from ..techniques.lm_weights import QUANTIZED_PREFILL_ATTR, LMWeightsConfig
from . import cost, measure, memory, quality
from .load import CausalLM
from .runner import timed_generate


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


def candidates(device: torch.device, extended: bool = False) -> list[Recipe]:
    """Generation recipes, cheapest first (the part each speeds up: targets()). Inapplicable ones are
    skipped with the reason. Each compiled recipe costs a first call of minutes on a small CPU, so
    the default list keeps the ones that won somewhere in our trials (BENCHMARKS.md "Text
    generation"); `extended` adds the rest (FP32 compiled, INT4 with its prompt pass on INT4, INT8
    dynamic activations with a compiled prefill), also by name."""
    dec, eager = LMDecodeConfig(), LMDecodeConfig(compile=False)
    out = [Recipe((eager,))]
    if dev.supports_bf16(device):
        # INT4 heads cost perplexity (+5.7% on SmolLM2): the head stays BF16 eager (INT8 weight-only
        # has no eager kernel) and INT8 compiled (aten._weight_int8pack_mm). INT4's kernel is slow at
        # M=128 (TTFT 0.79x): the default INT4 recipe runs the prompt on a BF16 copy of the weights.
        out += [Recipe((LMWeightsConfig("bf16", "int4", lm_head="float"), eager)),
                Recipe((LMWeightsConfig("bf16"), dec)),
                Recipe((LMWeightsConfig("bf16", "int8"), dec)),
                Recipe((LMWeightsConfig("bf16", "int4", lm_head="int8", prefill="bf16"), dec)),
                Recipe((LMWeightsConfig("bf16", "da8w4"), dec))]  # skipped where torchao lacks the kernel
    if extended or not dev.supports_bf16(device):
        # no native BF16 (e.g. AVX2 only): the model stays FP32, decode reads fewer bytes per token: INT4
        # layers through the BF16-input INT4 kernel, the decode step compiled with Inductor's C++ wrapper
        # (no Python between its kernels: 25 vs 29 ms a token on a 2-core AVX2 EPYC; first call up to 3
        # min), the head fbgemm INT8 x dynamic INT8 (SmoothQuant; half of FP16's bytes, one call a token:
        # 23.2 vs 24.7 ms, 4.23x FP32 eager, perplexity +0.1%) or FP16; or FP16 weights everywhere
        # (lossless). All run the prompt on an FP32 copy (their kernels are slower than FP32 at M=128).
        # Extended: fbgemm INT8 for every Linear (1.96x: each call crosses Python) or for the prompt copy
        # (a quarter of FP32's bytes). BENCHMARKS.md "host without native BF16" and 2026-12-07.
        cpp = LMDecodeConfig(cpp_wrapper=True)
        out += [Recipe((LMWeightsConfig("fp32", "int4", lm_head="int8-sq", prefill="fp32"), cpp)),
                Recipe((LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="fp32"), cpp)),
                Recipe((LMWeightsConfig("fp32", "fp16", prefill="fp32"), dec))]
    if extended:
        out += [Recipe((dec,)), Recipe((LMWeightsConfig("bf16", "int4", lm_head="int8"), dec)),
                Recipe((LMWeightsConfig("bf16", "int4"), eager)), Recipe((LMWeightsConfig("bf16", "int4"), dec))]
        out += [Recipe((LMWeightsConfig("fp32", "int8-dynamic"), LMDecodeConfig(compile_prefill=True)))]
        out += [Recipe((LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="fp32"), dec)),
                Recipe((LMWeightsConfig("fp32", "int8-sq"), dec)),
                Recipe((LMWeightsConfig("fp32", "int8-sq", lm_head="fp16"), dec)),
                Recipe((LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="int8-sq"), dec))]
        # Inductor's C++ GEMM template for the M=1 matmuls (FP32/FP16 weights): 4-6 minutes of compile
        tune = LMDecodeConfig(mode="max-autotune-no-cudagraphs")
        out += [Recipe((tune,)), Recipe((LMWeightsConfig("fp32", "fp16", prefill="fp32"), tune)),
                Recipe((LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="fp32"), tune))]
    return out


def targets(recipe: Recipe) -> str:
    """The part of generation a recipe is meant to speed up, from its steps' `speeds_up`:
    'prefill', 'decode', 'both' (or '' when no step declares one)."""
    parts = {getattr(step, "speeds_up", "") for step in recipe.steps} - {""}
    if "both" in parts or {"prefill", "decode"} <= parts:
        return "both"
    return parts.pop() if parts else ""


def by_name(names: list[str], device: torch.device) -> list[Recipe]:
    known = {r.name: r for r in candidates(device, extended=True)}
    missing = [n for n in names if n not in known]
    if missing:
        raise SlimError(f"unknown or unavailable generation recipe(s) {missing}", f"available here: {', '.join(known)}")
    return [known[n] for n in names]


def prompt_ids(tokenizer, prompts: list[str], length: int, batch: int) -> torch.Tensor:
    """[batch, length] token ids: row i is prompt i (cycling), preceded by the prompts before it
    when shorter than `length`, cut to its last `length` tokens (every row the same length: no padding)."""
    toks = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    rows = []
    for i in range(batch):
        ids, j = list(toks[i % len(toks)]), i
        while len(ids) < length:
            j -= 1
            ids = toks[j % len(toks)] + ids
        rows.append(ids[-length:])
    return torch.tensor(rows, dtype=torch.long)


def _plan(lm: CausalLM, config: GenerationConfig, plan: dict | None) -> dict:
    """The memory plan (memory.preflight's, or one made from the loaded model's config) with the context checked."""
    if plan is None:
        shape = memory.shape_from_config(lm.model.config)
        memory.check_context(shape, config.prompt_len, config.new_tokens)
        base = "bf16" if next(lm.model.parameters()).dtype == torch.bfloat16 else "fp32"
        plan = memory.make_plan(shape, config.prompt_len, config.new_tokens, config.batch_size, config.large_batch, baseline=base)
    return plan


def optimize_generation(lm: CausalLM, config: GenerationConfig = GenerationConfig(), progress: bool = True,
                        plan: dict | None = None) -> RunResult:
    """The generation search on `lm`; `plan`: memory.preflight's plan, made before `lm` was loaded."""
    plan = _plan(lm, config, plan)
    device = dev.resolve(config.device)
    with tmeasure.num_threads(config.threads):
        run = RunResult(
            workload={"name": os.path.basename(lm.spec.rstrip("/")), "spec": lm.spec, "task": "text-generation",
                      "source": lm.source, "prompt_len": config.prompt_len, "new_tokens": config.new_tokens,
                      "batch_size": config.batch_size, "large_batch": config.large_batch,
                      "prompts": config.prompts or "built-in", "metric": "perplexity",
                      "perplexity_text": f"pydoc_data.topics (first {quality.PPL_TOPICS} topics), {config.ppl_tokens} tokens"},
            machine={**dev.describe(device), **tmeasure.thread_info()},
            config=asdict(config), recipes=[], search={"memory": plan},
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        with kept_on_stop(run, lambda r: _write(r, config)):
            with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
                _search(lm, config, device, run, progress, plan)
    return run


@dataclass
class _Eval:
    ids: torch.Tensor  # [batch, prompt_len]
    big: torch.Tensor | None  # [large_batch, prompt_len]
    text: torch.Tensor  # perplexity tokens
    agree: list[torch.Tensor]  # one prompt each, natural length
    ref_tokens: list[torch.Tensor] = field(default_factory=list)
    base_ppl: float = 0.0
    base_distinct: float = 0.0
    calibration: list = field(default_factory=list)  # model kwargs of the calibration text (SmoothQuant)


# The same plain search as optimize.py: baseline first; each recipe applied to a fresh copy, first
# call (compile) timed apart, quality checked; survivors timed together round-robin at the asked and
# one larger batch; the fastest decode within --max-ppl-increase is chosen and saved.
def _search(lm: CausalLM, config: GenerationConfig, device, run: RunResult, progress: bool, plan: dict) -> None:
    t_start = time.perf_counter()
    tok, model = lm.tokenizer, lm.model.to(device).eval()
    prompts = quality.load_prompts(config.prompts)
    ev = _Eval(ids=prompt_ids(tok, prompts, config.prompt_len, config.batch_size).to(device),
               big=prompt_ids(tok, prompts, config.prompt_len, config.large_batch).to(device) if config.large_batch else None,
               text=quality.text_tokens(tok, config.ppl_tokens).to(device),
               agree=[tok(p, return_tensors="pt").input_ids.to(device) for p in prompts[:config.agreement_prompts]],
               calibration=quality.calibration(tok, device=device))
    base_dtype = plan["baseline"]["dtype"]
    base = GenRecipeResult(name="baseline", steps=[], status="baseline",
                           reason=f"the model's own generate(): {base_dtype.upper()} eager, dynamic cache, greedy"
                                  + ("" if base_dtype == "fp32" else f" ({plan['baseline']['why']})"))
    run.recipes.append(base)
    gen = timed_generate(model)
    try:
        config, sizing = _size(gen, ev, config, run)  # the knobs sized from one measured decode step
        base.first_call_ms, _ = measure.first_call(gen, ev.ids, config.new_tokens)
    except Exception as e:  # noqa: BLE001 - user model
        raise SlimError(f"the model's generate() fails: {type(e).__name__}: {first_line(e)}",
                        "check the model loads and generates with transformers alone") from e
    ev.ref_tokens = [gen(p, config.agreement_tokens).tokens for p in ev.agree]
    ev.base_distinct = quality.distinct_fraction(ev.ref_tokens)
    ev.base_ppl = base.perplexity = quality.perplexity(model, ev.text)
    base.greedy_agreement, base.ppl_increase_pct = 1.0, 0.0
    base.size_bytes = tmeasure.serialized_bytes(model)
    _write(run, config)

    explicit = bool(config.recipes)
    chosen = by_name(list(config.recipes), device) if explicit else candidates(device, extended=config.exhaustive)
    budget = Budget.of(config, t_start)
    run.search = {**(run.search or {}), "order": [r.name for r in chosen],
                  "ordered_by": "--recipes" if explicit else "generation.search.candidates",
                  "time_budget_min": budget.minutes, "exhaustive": config.exhaustive,
                  "objective": f"{config.objective}: {OBJECTIVES[config.objective]}"}
    if budget.seconds is not None:  # the final timing's predicted seconds come out of the recipes' share
        budget = Budget(budget.seconds - sizing.reserve_s, t_start)
    models = {"baseline": model}
    bar = progress_bar(len(chosen) + 2, unit="generation recipes", enabled=progress)
    tried, kept = 0, 0
    shape, batches = memory.Shape(**plan["shape"]), tuple(plan["batches"])
    for recipe in chosen:
        bar.set_postfix_str(recipe.name + budget.clock() + cost.eta_text(budget.left(), sizing, len(models)))
        skip = skip_reason(recipe, device, config, explicit, budget, tried)
        skip = skip or _first_step_not_applicable(recipe, model, ev, device)
        if not skip:  # the memory it would need beside the baseline and the recipes kept for timing
            est = memory.recipe_estimate(shape, recipe, base_dtype, plan["tokens"], batches)
            plan["recipes"][recipe.name] = {"peak_bytes": est.peak, "kept_bytes": est.kept, "detail": est.detail}
            skip = memory.fits(plan, est, kept)
        if skip:
            run.recipes.append(GenRecipeResult(name=recipe.name, steps=recipe.to_list(), targets=targets(recipe),
                                               status="skipped", reason=skip))
            bar.update(1)
            continue
        res, m = _try(recipe, model, ev, config, device)
        tried += res.status != "skipped"  # not applicable: not yet a candidate
        run.recipes.append(res)
        if m is not None:
            models[recipe.name] = m
            kept += est.kept
        _write(run, config)
        bar.update(1)

    bar.set_postfix_str("timing (interleaved)")
    by = {r.name: r for r in run.recipes}
    gens = {n: timed_generate(m) for n, m in models.items()}
    samples = measure.interleaved(gens, ev.ids, config.new_tokens, rounds=config.rounds)
    for name, s in samples.items():
        r = by[name]
        r.generation = measure.summary(s, config.batch_size, config.new_tokens)
        r.timing = tmeasure.summarize(s.step_ms, r.first_call_ms, config.batch_size) if s.step_ms else None
        r.ttft_ms, r.decode_ms_per_token = r.generation["ttft_ms"], r.generation["decode_ms_per_token"]
        r.decode_tokens_per_s = r.generation["decode_tokens_per_s"]
    if ev.big is not None and config.large_batch != config.batch_size:
        bar.set_postfix_str(f"timing batch {config.large_batch}")
        big = measure.interleaved(gens, ev.big, config.new_tokens, rounds=max(2, config.rounds // 2))
        for name, s in big.items():
            by[name].large_batch = measure.summary(s, config.large_batch, config.new_tokens)
        for name in big:
            bl, lb = by["baseline"].large_batch, by[name].large_batch
            lb["decode_speedup"] = _ratio(bl, lb, "decode_ms_per_token")
            lb["ttft_speedup"] = _ratio(bl, lb, "ttft_ms")
    for name, m in models.items():
        r = by[name]
        r.ttft_speedup = _ratio(base.generation, r.generation, "ttft_ms")
        r.decode_speedup = r.speedup = _ratio(base.generation, r.generation, "decode_ms_per_token")
        r.speeds_up = _parts(r.ttft_speedup, r.decode_speedup) if name != "baseline" else ""
        peak = tmeasure.peak_memory(lambda: gens[name](ev.ids, config.new_tokens), device, calls=1, repeats=1)
        r.peak_memory_bytes = peak["peak_bytes"]
        run.machine["peak_memory_method"] = peak["method"]
        if r.status == "ok" and (r.decode_speedup or 0) <= 1.0:
            r.status, r.reason = "rejected", f"decode slower than the baseline ({r.decode_speedup:.2f}x)"
    bar.update(1)

    best = choose(run.recipes, config.objective)
    if best is not None:
        best.status = "chosen"
        ttft = "no worse" if (best.ttft_speedup or 0) >= 0.95 else "WORSE"
        lead = {"latency": "fastest decode", "throughput": f"fastest decode at batch {config.large_batch}",
                "size": f"smallest ({best.size_bytes / 1e6:.1f} MB) with a faster decode",
                "memory": f"lowest peak memory ({(best.peak_memory_bytes or 0) / 1e6:.0f} MB) with a faster decode"}[config.objective]
        best.reason = (f"{lead}: {best.decode_speedup:.2f}x the baseline's tokens/s, TTFT {best.ttft_speedup:.2f}x "
                       f"({ttft}), perplexity {best.ppl_increase_pct:+.1f}% (limit +{config.max_ppl_increase:g}%)")
        run.chosen = best.name
        if config.out and config.save_model:  # the models not saved are let go first (a 1.5B run held 16 GB)
            bar.set_postfix_str("saving")
            gens, models = {}, {best.name: models[best.name]}
            from .artifacts import save

            run.artifact = save(os.path.join(config.out, "model"), lm, Recipe.from_list(best.steps), models[best.name],
                                ev.agree, config.agreement_tokens)
    bar.update(1)
    bar.close()


def _size(gen, ev: _Eval, config: GenerationConfig, run: RunResult) -> tuple[GenerationConfig, cost.Sizing]:
    """One short generation of the baseline; the config with its knobs sized by cost.size, and the sizing (run.search.cost)."""
    gen(ev.ids[:, :8], 3)  # every weight paged in, the prompt and decode kernels set up, at a fraction of a prompt's cost
    tr = gen(ev.ids, cost.PROBE_TOKENS)
    k, keep = cost.Knobs(**{f: getattr(config, f) for f in cost.Knobs.__dataclass_fields__}), config.objective == "throughput"
    sizing = cost.size(cost.speed_from_trace(tr.ttft_ms, tr.step_ms), k, config.budget_s, shrink=cost.KEEP_BATCH if keep else cost.SHRINK)
    run.search = {**(run.search or {}), "cost": sizing.as_dict()}
    ev.agree, ev.big = ev.agree[:sizing.sized["agreement_prompts"]], ev.big if sizing.sized["large_batch"] else None
    return replace(config, **{n: sizing.sized[n] for n in sizing.changed}), sizing


def _first_step_not_applicable(recipe: Recipe, model, ev: _Eval, device) -> str | None:
    """'not applicable: <step>: <why>' when the recipe's first step does not apply to the baseline
    model (decided before the memory check and before anything is copied), else None."""
    if not recipe.steps:
        return None
    step = recipe.steps[0]
    why = handler(step).applies(model, step, Context(device=device, example=None, calibration=lambda: ev.calibration))
    return f"not applicable: {step.label()}: {why}" if why else None


def _try(recipe: Recipe, model, ev: _Eval, config: GenerationConfig, device):
    res = GenRecipeResult(name=recipe.name, steps=recipe.to_list(), targets=targets(recipe))
    ctx = Context(device=device, example=None, calibration=lambda: ev.calibration)
    try:
        t0 = time.perf_counter()
        m = memory.trimmed(apply(memory.recipe_copy(model, recipe), recipe, ctx))
        res.prepare_s = time.perf_counter() - t0
        gen = timed_generate(m)
        res.first_call_ms, tr = measure.first_call(gen, ev.ids, config.new_tokens)
        res.notes = ctx.notes
        toks = [gen(p, config.agreement_tokens) for p in ev.agree]
        agree = quality.agreement([t.tokens for t in toks], ev.ref_tokens)
        res.greedy_agreement = agree["greedy_agreement"]
        res.fidelity = agree
        res.perplexity = quality.perplexity(m, ev.text)
        twin = getattr(m, "prefill_inner", None)
        if twin is not None and getattr(twin, QUANTIZED_PREFILL_ATTR, False):  # its own weights: the worse of the two counts
            tp = quality.perplexity(twin, ev.text)
            ctx.notes.append(f"perplexity of the decode weights {res.perplexity:.2f}, of the prompt-pass copy {tp:.2f}")
            res.perplexity = max(res.perplexity, tp)
        res.ppl_increase_pct = 100.0 * (res.perplexity / ev.base_ppl - 1.0)
        res.metrics = {"perplexity": res.perplexity}
        res.metric_drop = res.perplexity - ev.base_ppl
        res.size_bytes = tmeasure.serialized_bytes(m)
    except NotApplicable as e:
        res.status, res.reason, res.notes = "skipped", f"not applicable: {e.what}", ctx.notes
        return res, None
    except (torch.OutOfMemoryError, MemoryError) as e:
        res.status, res.reason = "failed", f"out of memory ({type(e).__name__})"
        return res, None
    except Exception as e:  # noqa: BLE001 - a recipe's failure is a result, not a crash
        msg = traceback.format_exc() if config.debug else first_line(e)
        res.status, res.reason, res.notes = "failed", f"{type(e).__name__}: {msg}"[:2000], ctx.notes
        return res, None
    bad = quality.garbage(tr.first_logits, res.perplexity, ev.base_ppl, quality.distinct_fraction([t.tokens for t in toks]),
                          ev.base_distinct)
    if bad:
        res.status, res.reason = "rejected", f"garbage: {bad}"
        return res, None
    if res.ppl_increase_pct > config.max_ppl_increase:
        res.status, res.reason = "rejected", f"perplexity {res.ppl_increase_pct:+.1f}% > +{config.max_ppl_increase:g}%"
        return res, None
    res.reason = f"perplexity {res.ppl_increase_pct:+.1f}%, greedy agreement {res.greedy_agreement:.0%}"
    return res, m


def choose(rows: list, objective: str):
    """The best "ok" row (quality kept, decode faster than the baseline) under `objective` (OBJECTIVES), or None."""
    ok = [r for r in rows if r.status == "ok" and r.decode_tokens_per_s]
    if not ok:
        return None
    key = {"latency": lambda r: -r.decode_tokens_per_s,
           "throughput": lambda r: -((r.large_batch or {}).get("decode_tokens_per_s") or r.decode_tokens_per_s),
           "size": lambda r: (r.size_bytes or float("inf"), -r.decode_tokens_per_s),
           "memory": lambda r: (r.peak_memory_bytes or float("inf"), -r.decode_tokens_per_s)}[objective]
    return min(ok, key=key)


def _ratio(base: dict | None, mine: dict | None, key: str) -> float | None:
    if not base or not mine or not base.get(key) or not mine.get(key):
        return None
    return base[key] / mine[key]


def _parts(ttft: float | None, decode: float | None, margin: float = 1.05) -> str:
    p, d = (ttft or 0) > margin, (decode or 0) > margin
    return "both" if p and d else "prefill" if p else "decode" if d else "neither"


def _write(run: RunResult, config: GenerationConfig) -> None:
    if not config.out:
        return
    os.makedirs(config.out, exist_ok=True)
    d = run.to_dict()
    write_json(os.path.join(config.out, "results.json"), d)
    from .report import format_generation_table

    write_text(os.path.join(config.out, "table.txt"), format_generation_table(d) + "\n")
    try:
        from ..report import write_html

        write_html(d, os.path.join(config.out, "report.html"))
    except Exception:  # noqa: BLE001 - the report is a convenience; results.json is the record
        pass
    if run.artifact:
        from .artifacts import write_reproduce

        write_reproduce(os.path.join(config.out, "reproduce.py"), run.artifact, config)
