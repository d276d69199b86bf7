"""`optimize` for text generation: try generation recipes on a causal LM, validate them on text, time
prefill and decode interleaved against the model's own FP32 eager generate(), choose, save."""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from .. import device as dev
from .. import measure as tmeasure
from .. import resume
from ..errors import SlimError, first_line
from ..progress import shown as progress_shown
from ..recipes import Recipe, apply, hooked
from ..results import RecipeResult, RunResult, kept_on_stop
from ..search import output
from ..search.config import Budget, SearchState
from ..search.loop import drive
from ..search.trial import fail
from ..search.workload_type import WorkloadType
from ..techniques import Context, handler
from ..techniques.lm_weights import QUANTIZED_PREFILL_ATTR
from . import cost, measure, memory, quality
from . import llamacpp as engine_rows
from .config import DEFAULT_TIME_BUDGET_MIN, OBJECTIVES, GenerationConfig, GenRecipeResult
from .load import CausalLM
from .runner import timed_generate


def candidates(device: torch.device, extended: bool = False) -> list[Recipe]:
    """Generation recipes, cheapest first: what the registered techniques contribute through their
    `generation_candidates(device, extended)` hook (TextGeneration.hook; today lm_decode.py's list).
    Inapplicable ones are skipped with the reason; `extended` (--exhaustive) adds the rest."""
    return hooked(TextGeneration.hook, device, extended)


def targets(recipe: Recipe) -> str:
    """The part of generation a recipe is meant to speed up, from its steps' `speeds_up`:
    'prefill', 'decode', 'both' (or '' when no step declares one)."""
    parts = {getattr(step, "speeds_up", "") for step in recipe.steps} - {""}
    if "both" in parts or {"prefill", "decode"} <= parts:
        return "both"
    return parts.pop() if parts else ""


def by_name(names: list[str], device: torch.device) -> list[Recipe]:
    known = {r.name: r for r in candidates(device, extended=True)}
    missing = [n for n in names if n not in known and not engine_rows.is_engine_name(n)]  # engines: their own rows
    if missing:
        raise SlimError(f"unknown or unavailable generation recipe(s) {missing}",
                        f"available here: {', '.join(list(known) + list(engine_rows.NAMES))}")
    return [known[n] for n in names if n in known]


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
    # the job as results.json's "workload" records it, and what a rerun must match for the settled rows
    # of an interrupted run to be reused (resume.session: the lock on --out and the resume, as optimize's)
    identity = {"spec": lm.spec, "prompt_len": config.prompt_len, "new_tokens": config.new_tokens,
                "batch_size": config.batch_size, "large_batch": config.large_batch, "prompts": config.prompts or "built-in"}
    with tmeasure.num_threads(config.threads), resume.session(config, None, identity), progress_shown(progress):
        run = RunResult(
            workload={"name": os.path.basename(lm.spec.rstrip("/")), **identity, "task": TextGeneration.task,
                      "source": lm.source, "metric": "perplexity",
                      "perplexity_text": f"pydoc_data.topics (first {quality.PPL_TOPICS} topics), {config.ppl_tokens} tokens"},
            machine={**dev.describe(device), **tmeasure.thread_info()},
            config=asdict(config), recipes=[], search={"memory": plan},
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        kind = TextGeneration(lm, plan, config)
        write = lambda r: output.write(r, config, kind.report_files)  # noqa: E731
        with kept_on_stop(run, write):
            with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
                # the same plain search as optimize.py (search/loop.drive): baseline first; each recipe
                # applied to a fresh copy, first call (compile) timed apart, quality checked; survivors
                # timed together round-robin at the asked and one larger batch; the fastest decode within
                # --max-ppl-increase is chosen and saved.
                drive(SearchState(lm, None, device, config, Budget.of(config), run, write=write,
                                  explicit=bool(config.recipes), kind=kind, progress=progress))
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


class TextGeneration(WorkloadType):
    """Text generation with a causal LM (search/workload_type.py): judged by perplexity and greedy
    agreement, timed as prefill (TTFT) and decode, each recipe checked against the memory plan first."""

    task = "text-generation"
    unit = "generation recipes"
    hook = "generation_candidates"
    table_title = "Text generation: time to first token, decode, quality"
    checkable = False

    def __init__(self, lm: CausalLM, plan: dict, config: GenerationConfig):
        self.lm, self.plan, self.config, self.kept = lm, plan, config, 0
        self.shape, self.batches = memory.Shape(**plan["shape"]), tuple(plan["batches"])

    def baseline(self, s: SearchState) -> GenRecipeResult:
        config, device, plan, tok = s.config, s.device, self.plan, self.lm.tokenizer
        model = self.lm.model.to(device).eval()
        prompts = quality.load_prompts(config.prompts)
        self.ev = ev = _Eval(
            ids=prompt_ids(tok, prompts, config.prompt_len, config.batch_size).to(device),
            big=prompt_ids(tok, prompts, config.prompt_len, config.large_batch).to(device) if config.large_batch else None,
            text=quality.text_tokens(tok, config.ppl_tokens).to(device),
            agree=[tok(p, return_tensors="pt").input_ids.to(device) for p in prompts[:config.agreement_prompts]],
            calibration=quality.calibration(tok, device=device))
        s.example = ev
        base_dtype = plan["baseline"]["dtype"]
        base = GenRecipeResult(name="baseline", steps=[], status="baseline",
                               reason=f"the model's own generate(): {base_dtype.upper()} eager, dynamic cache, greedy"
                                      + ("" if base_dtype == "fp32" else f" ({plan['baseline']['why']})"))
        s.run.recipes.append(base)
        gen = timed_generate(model)
        try:
            config, self.sizing = _size(gen, ev, config, s.run)  # the knobs sized from one measured decode step
            s.config = self.config = config
            base.first_call_ms, _ = measure.first_call(gen, ev.ids, config.new_tokens)
        except Exception as e:  # noqa: BLE001 - user model
            raise SlimError(f"the model's generate() fails: {type(e).__name__}: {first_line(e)}",
                            "check the model loads and generates with transformers alone") from e
        self.asked_minutes = s.budget.minutes
        if s.budget.seconds is not None:  # the final timing's predicted seconds come out of the recipes' share
            s.budget = Budget(s.budget.seconds - self.sizing.reserve_s, s.budget.start)
        ev.ref_tokens = [gen(p, config.agreement_tokens).tokens for p in ev.agree]
        ev.base_distinct = quality.distinct_fraction(ev.ref_tokens)
        ev.base_ppl = base.perplexity = quality.perplexity(model, ev.text)
        base.greedy_agreement, base.ppl_increase_pct = 1.0, 0.0
        base.size_bytes = tmeasure.serialized_bytes(model)
        s.models["baseline"], self.base = model, base
        return base

    def candidates(self, s: SearchState) -> list[Recipe]:
        config = s.config
        # engines first (seconds each, their files cached): judged by the same gates, timed with the rest
        threads = config.threads or torch.get_num_threads()
        for fields, proxy in engine_rows.candidate_rows(self.lm, self.ev, config, s.budget, threads, tuple(config.recipes or ())):
            s.run.recipes.append(GenRecipeResult(**fields))
            s.models.update({fields["name"]: proxy} if proxy is not None else {})
        chosen = by_name(list(config.recipes), s.device) if s.explicit else candidates(s.device, extended=config.exhaustive)
        s.run.search = {**(s.run.search or {}), "order": [r.name for r in chosen],
                        "ordered_by": "--recipes" if s.explicit else "generation.search.candidates",
                        "time_budget_min": self.asked_minutes, "exhaustive": config.exhaustive,
                        "objective": f"{config.objective}: {OBJECTIVES[config.objective]}"}
        return chosen

    def eta(self, s: SearchState) -> str:
        return cost.eta_text(s.budget.left(), self.sizing, len(s.models))

    def skip(self, recipe: Recipe, s: SearchState) -> str | None:
        """Its first step does not apply, or the memory it would need beside the baseline and the
        recipes kept for timing does not fit (memory.recipe_estimate, checked before it is applied)."""
        why = _first_step_not_applicable(recipe, s.models["baseline"], self.ev, s.device)
        if why:
            return why
        est = memory.recipe_estimate(self.shape, recipe, self.plan["baseline"]["dtype"], self.plan["tokens"], self.batches)
        self.plan["recipes"][recipe.name] = {"peak_bytes": est.peak, "kept_bytes": est.kept, "detail": est.detail}
        self.est = est
        return memory.fits(self.plan, est, self.kept)

    def row(self, recipe: Recipe, **fields) -> GenRecipeResult:
        return GenRecipeResult(name=recipe.name, steps=recipe.to_list(), targets=targets(recipe), **fields)

    def try_one(self, recipe: Recipe, s: SearchState):
        return try_recipe(recipe, s.models["baseline"], self.ev, s.config, s.device)

    def keep(self, recipe: Recipe, row, model, s: SearchState) -> None:
        s.models[recipe.name] = model
        self.kept += self.est.kept

    def time_survivors(self, s: SearchState) -> None:
        config, run, models, ev, base = s.config, s.run, s.models, self.ev, self.base
        s.bar.set_postfix_str("timing (interleaved)")
        by = {r.name: r for r in run.recipes}
        gens = {n: generator(m) for n, m in models.items()}
        samples = measure.interleaved(gens, ev.ids, config.new_tokens, rounds=config.rounds)
        for name, smp in samples.items():
            r = by[name]
            r.generation = measure.summary(smp, config.batch_size, config.new_tokens)
            r.timing = tmeasure.summarize(smp.step_ms, r.first_call_ms, config.batch_size) if smp.step_ms else None
            r.ttft_ms, r.decode_ms_per_token = r.generation["ttft_ms"], r.generation["decode_ms_per_token"]
            r.decode_tokens_per_s = r.generation["decode_tokens_per_s"]
        if ev.big is not None and config.large_batch != config.batch_size:
            s.bar.set_postfix_str(f"timing batch {config.large_batch}")
            torch_gens = {n: g for n, g in gens.items() if not engine_rows.is_engine_name(n)}  # engines: batch 1 only
            big = measure.interleaved(torch_gens, ev.big, config.new_tokens, rounds=max(2, config.rounds // 2))
            for name, smp in big.items():
                by[name].large_batch = measure.summary(smp, config.large_batch, config.new_tokens)
            for name in big:
                bl, lb = by["baseline"].large_batch, by[name].large_batch
                lb["decode_speedup"] = _ratio(bl, lb, "decode_ms_per_token")
                lb["ttft_speedup"] = _ratio(bl, lb, "ttft_ms")
        for name, m in models.items():
            r = by[name]
            r.ttft_speedup = _ratio(base.generation, r.generation, "ttft_ms")
            r.decode_speedup = r.speedup = _ratio(base.generation, r.generation, "decode_ms_per_token")
            r.speeds_up = _parts(r.ttft_speedup, r.decode_speedup) if name != "baseline" else ""
            peak = ({"peak_bytes": engine_rows.peak_bytes(m, ev.ids, config.new_tokens), "method": "RSS high-water rise"}
                    if engine_rows.is_engine_name(name) else
                    tmeasure.peak_memory(lambda: gens[name](ev.ids, config.new_tokens), s.device, calls=1, repeats=1))
            r.peak_memory_bytes = peak["peak_bytes"]
            run.machine["peak_memory_method"] = peak["method"]
            if r.status == "ok" and (r.decode_speedup or 0) <= 1.0:
                r.status, r.reason = "rejected", f"decode slower than the baseline ({r.decode_speedup:.2f}x)"

    def choose(self, s: SearchState):
        config, run = s.config, s.run
        best = choose(run.recipes, config.objective)
        if best is None:
            engine_rows.close_all(s.models)
            return None
        best.status = "chosen"
        ttft = "no worse" if (best.ttft_speedup or 0) >= 0.95 else "WORSE"
        lead = {"latency": "fastest decode", "throughput": f"fastest decode at batch {config.large_batch}",
                "size": f"smallest ({best.size_bytes / 1e6:.1f} MB) with a faster decode",
                "memory": f"lowest peak memory ({(best.peak_memory_bytes or 0) / 1e6:.0f} MB) with a faster decode"}[config.objective]
        best.reason = (f"{lead}: {best.decode_speedup:.2f}x the baseline's tokens/s, TTFT {best.ttft_speedup:.2f}x "
                       f"({ttft}), perplexity {best.ppl_increase_pct:+.1f}% (limit +{config.max_ppl_increase:g}%)")
        run.chosen = best.name
        if config.out and config.save_model:  # the models not saved are let go first (a 1.5B run held 16 GB)
            s.bar.set_postfix_str("saving")
            engine_rows.close_all({n: m for n, m in s.models.items() if n != best.name})
            s.models = {best.name: s.models[best.name]}
            from .artifacts import save

            run.artifact = save(os.path.join(config.out, "model"), self.lm, Recipe.from_list(best.steps), s.models[best.name],
                                self.ev.agree, config.agreement_tokens)
        engine_rows.close_all(s.models)
        return best

    def report_files(self, run: RunResult, d: dict) -> dict[str, str]:
        """table.txt, and reproduce.py once a model is saved."""
        from .artifacts import reproduce_code

        files = {"table.txt": self.table(d) + "\n"}
        if run.artifact:
            files["reproduce.py"] = reproduce_code(run.artifact, self.config)
        return files

    @classmethod
    def table(cls, d: dict) -> str:
        """Prefill (TTFT) and decode apart, with perplexity and greedy agreement."""
        from .report import format_generation_table

        return format_generation_table(d)

    @classmethod
    def load_saved(cls, folder: str, device: str = "cpu", verify: bool = True):
        from .artifacts import load

        return load(folder, device=device, verify=verify)


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


def generator(m):
    """A candidate's timed greedy generation: its own `generate_timed(ids, new_tokens)` (a GreedyLM, or
    an engine running in a worker process), else runner.timed_generate's (transformers' generate())."""
    return m.generate_timed if hasattr(m, "generate_timed") else timed_generate(m)


def try_recipe(recipe: Recipe, model, ev: _Eval, config: GenerationConfig, device):
    """Apply `recipe` to a copy of `model` (or the model itself when it shares the weights) and judge
    it on `ev`: (its row, the model or None). A failure is a row made by search/trial.fail. What the
    recipe returns is generated with through `generator` and scored by its own `perplexity(ids)` where
    it has one (an engine outside torch), else by quality.perplexity."""
    res = GenRecipeResult(name=recipe.name, steps=recipe.to_list(), targets=targets(recipe))
    ctx = Context(device=device, example=None, calibration=lambda: ev.calibration)
    try:
        t0 = time.perf_counter()
        m = memory.trimmed(apply(memory.recipe_copy(model, recipe), recipe, ctx))
        res.prepare_s = time.perf_counter() - t0
        gen = generator(m)
        res.first_call_ms, tr = measure.first_call(gen, ev.ids, config.new_tokens)
        res.notes = ctx.notes
        toks = [gen(p, config.agreement_tokens) for p in ev.agree]
        agree = quality.agreement([t.tokens for t in toks], ev.ref_tokens)
        res.greedy_agreement = agree["greedy_agreement"]
        res.fidelity = agree
        res.perplexity = m.perplexity(ev.text) if hasattr(m, "perplexity") else quality.perplexity(m, ev.text)
        twin = getattr(m, "prefill_inner", None)
        if twin is not None and getattr(twin, QUANTIZED_PREFILL_ATTR, False):  # its own weights: the worse of the two counts
            tp = quality.perplexity(twin, ev.text)
            ctx.notes.append(f"perplexity of the decode weights {res.perplexity:.2f}, of the prompt-pass copy {tp:.2f}")
            res.perplexity = max(res.perplexity, tp)
        res.ppl_increase_pct = 100.0 * (res.perplexity / ev.base_ppl - 1.0)
        res.metrics = {"perplexity": res.perplexity}
        res.metric_drop = res.perplexity - ev.base_ppl
        res.size_bytes = tmeasure.serialized_bytes(m)
    except Exception as e:  # noqa: BLE001 - a recipe's failure is a result, not a crash
        return fail(res, e, ctx.notes, config.debug), None
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
