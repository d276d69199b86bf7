"""Greedy generation timed per token: the model's own generate() (the baseline) and gpt-fast's lean
loop (static KV cache, prefill, then one fixed-shape, optionally compiled, step per token)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn


@dataclass
class GenTrace:
    """One generation: the new tokens [B, N] and when each step finished."""

    tokens: torch.Tensor
    ttft_ms: float  # prompt pass + first token
    step_ms: list[float] = field(default_factory=list)  # each decode step after the first token
    first_logits: torch.Tensor | None = None  # logits of the first new token [B, V] (NaN check)


class _Stamps:
    """A generate() streamer: records the time of every put() (the prompt first, then each token)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def hf_generate(model: nn.Module, input_ids: torch.Tensor, new_tokens: int, **kwargs) -> GenTrace:
    """The model's own generate(): greedy, exactly `new_tokens` tokens (min_new_tokens suppresses EOS,
    so its logit never wins; GreedyLM.generate_timed applies the same rule)."""
    stamps = _Stamps()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=stamps,
                             pad_token_id=_pad_id(model), **kwargs)
    ts = stamps.times[1:]  # the first put() is the prompt
    steps = [(b - a) * 1000.0 for a, b in zip(ts, ts[1:])]
    return GenTrace(tokens=out[:, input_ids.shape[1]:], ttft_ms=(ts[0] - t0) * 1000.0, step_ms=steps)


def _pad_id(model) -> int | None:
    cfg = getattr(model, "generation_config", None)
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None:
        eos = getattr(cfg, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return pad


# Both paths stamp the time after every token, so TTFT and decode are measured the same way.
# The lean loop's decode step has fixed shapes, so torch.compile makes it one graph: no per-op
# Python dispatch, no per-token cache growth.
class GreedyLM(nn.Module):
    """A causal LM whose greedy generate() runs the lean loop: static KV cache, decode step
    optionally compiled, the prompt pass optionally on a second copy of the weights (`prefill_model`).
    Any other generate() call (sampling, beams, ...) goes to the model's own. State dict keys keep
    the 'inner.' prefix."""

    def __init__(self, inner: nn.Module, compile_decode: bool = True, compile_prefill: bool = False,
                 compile_options: dict | None = None, freezing: bool = False, prefill_model: nn.Module | None = None):
        super().__init__()
        self.inner = inner
        # the prompt pass may run on other weights (e.g. BF16 while decode reads INT4); same KV cache
        self.prefill_inner = prefill_model
        self.compile_decode = compile_decode
        self.compile_prefill = compile_prefill
        self.compile_options = dict(compile_options or {})
        # Inductor freezes weights only with its global flag on while Dynamo captures (see
        # techniques/compile.py): set for each call, never left on.
        self.freezing = freezing and (compile_decode or compile_prefill)
        self._caches: dict[tuple, object] = {}
        self._biases: dict[tuple, tuple] = {}
        # A static cache with sliding-window layers (Gemma 2/3, Mistral-style configs) keeps its length in a
        # Python int (transformers' StaticSlidingWindowLayer.cumulative_length_int) that Dynamo guards on:
        # with dynamic=False the step recompiles every token; automatic dynamic makes that int symbolic
        # (3 graphs: first step, growing window, full window). Its graph changes when the window fills,
        # so the guard-skipping stance is never used there.
        self.sliding = compile_decode and has_sliding_layers(inner.config)
        # whether later steps of a call may skip Dynamo's guards: None = undecided (the first call checks
        # every guard and counts the graphs compiled after its first step), False = never
        self.skip_guards: bool | None = False if self.sliding else None
        self._decode = self._compiled(_decode_step, dynamic=None if self.sliding else False) if compile_decode else _decode_step
        self._prefill = self._compiled(_prefill_step, dynamic=True) if compile_prefill else _prefill_step

    def _compiled(self, fn, dynamic=False):
        opts = dict(self.compile_options)
        mode = opts.pop("mode", None)
        return torch.compile(fn, fullgraph=True, dynamic=dynamic, mode=mode, options=opts or None)

    @property
    def config(self):
        return self.inner.config

    @property
    def generation_config(self):
        return self.inner.generation_config

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def _cache(self, batch: int, length: int):
        from transformers import StaticCache

        # one cache per batch size, sized in steps of 256 tokens, reused (reset) between calls
        max_len = -(-length // 256) * 256
        key = (batch, max_len)
        cache = self._caches.get(key)
        if cache is None:
            cache = StaticCache(config=self.inner.config, max_cache_len=max_len)
            self._caches[key] = cache
        else:
            cache.reset()
        return cache

    def generate(self, input_ids: torch.Tensor, attention_mask=None, max_new_tokens: int = 32,
                 do_sample: bool = False, **kwargs):
        """Greedy: the lean loop with generate()'s own rules (EOS suppressed for the first
        `min_new_tokens`, then a row that emits EOS is finished and padded, and the loop stops when all
        are). Anything else (sampling, beams, padding) goes to the model's own generate()."""
        lean = (not do_sample and kwargs.get("num_beams", 1) == 1
                and set(kwargs) <= {"num_beams", "min_new_tokens", "pad_token_id", "eos_token_id"}
                and (attention_mask is None or bool(attention_mask.all())))
        if not lean:
            return self.inner.generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                       do_sample=do_sample, **kwargs)
        eos = kwargs.get("eos_token_id")
        trace = self.generate_timed(input_ids, max_new_tokens, min_new_tokens=kwargs.get("min_new_tokens") or 0,
                                    eos=eos_ids(self.inner) if eos is None else _as_list(eos),
                                    pad=kwargs.get("pad_token_id"))
        return torch.cat([input_ids, trace.tokens], dim=1)

    def generate_timed(self, input_ids: torch.Tensor, new_tokens: int, min_new_tokens: int | None = None,
                       eos: list[int] | None = None, pad: int | None = None) -> GenTrace:
        """Greedy generation, timed per token. By default exactly `new_tokens` tokens with EOS
        suppressed, as hf_generate() (min_new_tokens = max_new_tokens) does for the baseline."""
        from ..compiled import inductor_freezing

        min_new = new_tokens if min_new_tokens is None else min_new_tokens
        eos = eos_ids(self.inner) if eos is None else eos
        with torch.no_grad(), inductor_freezing(self.freezing) if self.freezing else contextlib.nullcontext():
            return self._generate_timed(input_ids, new_tokens, min_new, eos, pad)

    def _guards(self, step: int):
        """Dynamo checks its guards (over every weight of the model: ~2 ms a step on a 135M model, 8% of
        an INT4 decode step on a 2-core CPU) on the first decode step of each call, which compiles or
        picks the graph; the later steps of the same call pass the same model, cache and shapes, so they
        skip them (torch.compiler.set_stance(skip_guard_eval_unsafe=True): safe where nothing but tensor
        values change, as here)."""
        if not self.compile_decode or step < 2 or self.skip_guards is not True:
            return contextlib.nullcontext()
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)

    def _step(self, i: int, *args):
        """One decode step; where the guard-skipping stance meets a graph that must recompile
        ("Recompilation triggered with skip_guard_eval_unsafe stance"), the step runs again with every
        guard checked and this model stops skipping them."""
        with self._guards(i):
            try:
                return self._decode(*args)
            except RuntimeError as e:
                if "skip_guard_eval_unsafe" not in str(e):
                    raise
        self.skip_guards = False
        return self._decode(*args)

    def _bias(self, vocab: int, eos: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit bias with -inf at the EOS ids, zeros): added before the argmax."""
        key = (vocab, tuple(eos), str(device))
        if key not in self._biases:
            zero = torch.zeros(vocab, device=device)
            self._biases[key] = (zero.index_fill(0, torch.tensor(eos, dtype=torch.long, device=device), float("-inf"))
                                 if eos else zero, zero)
        return self._biases[key]

    def _generate_timed(self, input_ids: torch.Tensor, new_tokens: int, min_new: int, eos: list[int],
                        pad: int | None) -> GenTrace:
        if new_tokens < 1:
            raise ValueError("new_tokens must be >= 1")
        b, n = input_ids.shape
        cache = self._cache(b, n + new_tokens)
        t0 = time.perf_counter()
        kw = cache_kwarg(self.inner)
        first = self.inner if self.prefill_inner is None else self.prefill_inner
        logits = self._prefill(first, input_ids, cache, torch.arange(n, device=input_ids.device), kw)
        no_eos, plain = self._bias(logits.shape[-1], eos, input_ids.device)
        tok = (logits + (no_eos if min_new > 0 else plain)).argmax(-1, keepdim=True)
        t_prev = time.perf_counter()
        ttft = (t_prev - t0) * 1000.0
        out, steps = [tok], []
        stop = bool(eos) and min_new < new_tokens  # generate()'s EOS rule applies to some steps
        if stop:
            eos_t = torch.tensor(eos, device=input_ids.device)
            done = torch.isin(tok, eos_t)
            pad = _pad_id(self.inner) if pad is None else pad
            pad_t = torch.tensor(eos[0] if pad is None else pad, device=input_ids.device)
        pos = torch.tensor([n], device=input_ids.device)
        graphs = None
        for i in range(1, new_tokens):
            if stop and bool(done.all()):
                break
            tok = self._step(i, self.inner, tok, cache, pos, kw, no_eos if i < min_new else plain)
            if i == 1:
                graphs = _graphs()
            pos += 1
            if stop:
                tok = torch.where(done, pad_t, tok)
                done = done | torch.isin(tok, eos_t)
            now = time.perf_counter()
            steps.append((now - t_prev) * 1000.0)
            t_prev = now
            out.append(tok)
        if self.compile_decode and self.skip_guards is None and len(steps) >= 2:
            # the steps after the first compiled nothing new: the same graph serves every step
            self.skip_guards = _graphs() == graphs
        return GenTrace(tokens=torch.cat(out, dim=1), ttft_ms=ttft, step_ms=steps, first_logits=logits.float())


def _graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def has_sliding_layers(config) -> bool:
    """Whether transformers' StaticCache for `config` has sliding-window (or chunked) layers: built
    without tensors (its layers allocate on first use)."""
    try:
        from transformers import StaticCache

        cache = StaticCache(config=config, max_cache_len=256)
        return any(getattr(layer, "is_sliding", False) for layer in cache.layers)
    except Exception:  # noqa: BLE001 - an unusual config: read its layer types
        types = getattr(config, "layer_types", None) or []
        return any("sliding" in str(t) or "chunked" in str(t) for t in types)


def eos_ids(model) -> list[int]:
    """The end-of-sequence token ids of the model's generation config ([] if it has none)."""
    cfg = getattr(model, "generation_config", None)
    return _as_list(getattr(cfg, "eos_token_id", None))


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids if isinstance(ids, (list, tuple)) else [ids])]


def cache_kwarg(model) -> str:
    """The name forward() takes the KV cache under: 'cache' (transformers >= 5.2x) or 'past_key_values'."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefill_step(model, input_ids, cache, cache_position, kw):
    out = model(input_ids=input_ids, **{kw: cache}, cache_position=cache_position, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1]


def _decode_step(model, tok, cache, cache_position, kw, bias):
    # positions given (as generate() gives them): some models derive them from the cache's length otherwise,
    # a data-dependent slice Dynamo cannot compile (OPT: position_ids[:, past_seen_tokens:])
    pos = cache_position.clone()
    out = model(input_ids=tok, **{kw: cache}, cache_position=pos, position_ids=pos.unsqueeze(0).expand(tok.shape[0], -1),
                use_cache=True)
    return (out.logits[:, -1] + bias).argmax(-1, keepdim=True)


Generate = Callable[[torch.Tensor, int], GenTrace]


def timed_generate(model: nn.Module) -> Generate:
    """The timed greedy generation of `model`: the lean loop for a GreedyLM, an engine proxy's own
    (timed in its worker: generation/llamacpp.py), generate() otherwise."""
    if isinstance(model, GreedyLM) or not isinstance(model, nn.Module):
        return model.generate_timed
    return lambda ids, n: hf_generate(model, ids, n)
