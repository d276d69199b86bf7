"""A memory plan for the generation search, made before any weight is materialized: the model's shape
from its transformers config (a model built on the meta device) or its GGUF header, the bytes of its
weights at each precision, the KV cache at the asked prompt + new tokens and batch sizes, each recipe's
peak and what it keeps while the search goes on, against the memory this process can use (cgroup
limit, MemAvailable, or TORCHSLIM_MEMORY_LIMIT)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..errors import SlimError

LIMIT_ENV = "TORCHSLIM_MEMORY_LIMIT"  # bytes, or with a K/M/G suffix: the memory the plan may use
HEADROOM = 0.9  # plan within 90% of what is available (allocator slack, Python objects, the tokenizer)
COMPILE_ALLOWANCE = 512 << 20  # Inductor's compile of a decode graph (an allowance, not a measurement)
STATIC_CACHE_STEP = 256  # runner.GreedyLM sizes its static KV cache in steps of 256 tokens
PPL_WINDOW = 256  # quality.perplexity's window: logits of 256 tokens x vocab, in FP32, with their log-softmax
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int8-dynamic": 1.0, "int8-sq": 1.0}
GB = 1e9


@dataclass(frozen=True)
class Shape:
    """What the memory plan needs of a causal LM (element counts, not bytes)."""

    params: int  # unique parameters (a tied head counted once)
    linear: int  # in the decoder's nn.Linear layers (what weight-only quantization shrinks), head excluded
    embed: int  # the input embedding table
    head: int  # the LM head's own weight (0 when tied to the embedding)
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    hidden: int
    intermediate: int
    context: int | None  # max_position_embeddings / <arch>.context_length
    source: str  # "config" or "gguf header"

    @property
    def tied(self) -> bool:
        return self.head == 0


def _text(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _first(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def shape_from_config(cfg) -> Shape:
    """The Shape of the causal LM a transformers config describes (built on the meta device: no memory)."""
    import torch
    import torch.nn as nn
    import transformers

    from ..quant.common import quiet

    with torch.device("meta"), quiet():
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    t = _text(cfg)
    params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = out is not None and emb is not None and out.weight is emb.weight
    head_mods = {id(out)} if out is not None else set()
    linear = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                 for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in head_mods)
    heads = _first(t, "num_attention_heads", "n_head", default=1)
    hidden = _first(t, "hidden_size", "n_embd", "d_model", default=0)
    return Shape(params=params, linear=linear, embed=emb.weight.numel() if emb is not None else 0,
                 head=0 if tied or out is None else out.weight.numel(),
                 layers=_first(t, "num_hidden_layers", "n_layer", default=0),
                 kv_heads=_first(t, "num_key_value_heads", "n_head_kv", default=heads),
                 head_dim=_first(t, "head_dim", default=hidden // max(1, heads)) or hidden // max(1, heads),
                 vocab=_first(t, "vocab_size", default=0), hidden=hidden,
                 intermediate=_first(t, "intermediate_size", "ffn_dim", default=4 * hidden) or 4 * hidden,
                 context=_first(t, "max_position_embeddings", "n_positions"), source="config")


def shape_from_gguf(header) -> Shape:
    """The Shape of the model in a GGUF file, from its header (gguf_header.read_header)."""
    by = {t.name: t for t in header.tensors}
    emb = by.get("token_embd.weight")
    out = by.get("output.weight")
    linear = sum(t.numel for t in header.tensors if t.name.startswith("blk.") and len(t.shape) >= 2)
    heads = _scalar(header.get("attention.head_count", 1))
    kv = _scalar(header.get("attention.head_count_kv", heads))
    hidden = int(header.get("embedding_length", 0) or 0)
    vocab = int(header.metadata.get("tokenizer.ggml.tokens", 0) or (emb.shape[-1] if emb else 0))
    return Shape(params=header.parameters, linear=linear, embed=emb.numel if emb else 0, head=out.numel if out else 0,
                 layers=int(header.get("block_count", 0) or 0), kv_heads=kv,
                 head_dim=int(header.get("attention.key_length", 0) or hidden // max(1, heads)), vocab=vocab, hidden=hidden,
                 intermediate=_scalar(header.get("feed_forward_length", 4 * hidden)),
                 context=int(header.get("context_length")) if header.get("context_length") else None, source="gguf header")


def _scalar(v) -> int:
    """A per-layer list (some GGUF architectures) as its largest value."""
    return int(max(v)) if isinstance(v, list) and v else int(v or 0)


def kv_cache_bytes(shape: Shape, tokens: int, batch: int, dtype_bytes: float) -> int:
    """Keys and values of every layer for `tokens` positions x `batch` rows (sliding-window layers
    counted at full length: an upper bound)."""
    return int(2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * batch * dtype_bytes)


def int4_bytes(group: int) -> float:
    """Bytes per INT4 weight: half a byte + a BF16 scale and zero point per group."""
    return 0.5 + 4.0 / group


def weights_bytes(shape: Shape, dtype: str = "fp32", quant: str = "none", group: int = 32, lm_head: str = "same") -> int:
    """The weights of the model as lm_weights(dtype, quant, lm_head) leaves it (no prefill copy)."""
    d = BYTES[dtype]
    q = int4_bytes(group) if quant in ("int4", "da8w4") else BYTES.get(quant, d) if quant != "none" else d
    head_n = shape.head or shape.embed
    head = {"same": q, "float": d, "int8": 1.0, "fp16": 2.0, "int8-sq": 1.0}[lm_head if quant != "none" else "float"]
    untied = shape.tied and quant != "none" and lm_head != "float"  # lm_weights gives a quantized head its own weight
    rest = shape.params - shape.linear - (shape.head if not shape.tied else 0)
    return int(shape.linear * q + rest * d + (head_n * head if (untied or not shape.tied) else 0))


@dataclass
class Estimate:
    """One recipe's memory: `peak` while it is prepared and run, `kept` while the search keeps it for timing."""

    peak: int
    kept: int
    detail: str


def recipe_estimate(shape: Shape, recipe, base_dtype: str, tokens: int, batches: tuple[int, ...]) -> Estimate:
    """Peak and kept bytes of `recipe` (its steps: lm_weights, lm_decode) beside the baseline. The search
    deep-copies the baseline directly in the recipe's dtype (recipe_copy), lm_weights quantizes it layer
    by layer in place, a separate prefill copy is another model in its dtype, Inductor's freezing packs
    float Linear weights once more, and the static KV cache is kept per batch size."""
    lw = next((s for s in recipe.steps if getattr(s, "name", "") == "lm_weights"), None)
    dec = next((s for s in recipe.steps if getattr(s, "name", "") == "lm_decode"), None)
    dtype = lw.dtype if lw is not None else base_dtype
    quant = lw.quant if lw is not None else "none"
    shared = shares_weights(recipe)  # wraps the baseline's own weights: no copy
    w = 0 if shared else weights_bytes(shape, dtype, quant, getattr(lw, "group_size", 32), getattr(lw, "lm_head", "same"))
    twin = 0
    if lw is not None and lw.prefill != "same":
        twin = weights_bytes(shape, "fp32", "int8-sq") if lw.prefill == "int8-sq" else weights_bytes(shape, lw.prefill)
    compiled = dec is not None and dec.compile
    frozen = shape.linear * BYTES[dtype] if compiled and dec.freezing and quant == "none" else 0
    kv_b = 2.0 if dtype == "bf16" else 4.0
    static = -(-tokens // STATIC_CACHE_STEP) * STATIC_CACHE_STEP
    kv = sum(kv_cache_bytes(shape, static if dec is not None else tokens, b, kv_b) for b in batches)
    kept = w + twin + frozen + kv
    copy_ = 0 if shared else weights_bytes(shape, copy_dtype(recipe, base_dtype))  # recipe_copy, before lm_weights quantizes it
    peak = max(copy_ + twin, kept) + (COMPILE_ALLOWANCE if compiled else 0)
    detail = (("the baseline's weights (shared)" if shared else f"weights {size(w)}") + (f" + prefill copy {size(twin)}" if twin else "")
              + (f" + frozen float copy {size(frozen)}" if frozen else "") + f" + KV cache {size(kv)}"
              + (f" + compile allowance {size(COMPILE_ALLOWANCE)}" if compiled else ""))
    return Estimate(peak=int(peak), kept=int(kept), detail=detail)


def copy_dtype(recipe, base_dtype: str) -> str:
    """The dtype the search copies the baseline in for `recipe`: its lm_weights step's (a BF16 recipe on an
    FP32 baseline gets a BF16 copy, never an FP32 one first), else the baseline's."""
    lw = next((s for s in recipe.steps if getattr(s, "name", "") == "lm_weights"), None)
    return lw.dtype if lw is not None and lw.dtype in BYTES else base_dtype


def recipe_copy(model, recipe):
    """The model `recipe` is applied to: the baseline itself (shares_weights), or a deep copy whose
    parameters are made directly in copy_dtype (one parameter at a time; ties kept), so the peak is the
    baseline + one copy in the recipe's dtype."""
    import copy

    import torch

    if shares_weights(recipe):
        return model
    base = "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32"
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[copy_dtype(recipe, base)]
    memo = {}
    for p in model.parameters():  # unique parameters: a tied head maps to the same new parameter
        if p.is_floating_point() and p.dtype != want:
            memo[id(p)] = torch.nn.Parameter(p.detach().to(want), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def trimmed(model):
    """`model`, after handing the C heap's free memory back to the system (glibc malloc_trim): a quantized
    recipe frees its float weights layer by layer, in pieces under glibc's mmap threshold that would stay
    resident (on Qwen2.5-1.5B, 2.4 GB beside a 1.8 GB INT4 model). A no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return model


def shares_weights(recipe) -> bool:
    """True for a recipe that leaves the weights as they are (only lm_decode: the static cache and the
    compiled loop wrap the model): the search applies it to the baseline itself, not to a copy."""
    return all(getattr(s, "name", "") == "lm_decode" for s in recipe.steps)


def size(n: float) -> str:
    """Bytes for people: '1.23 GB', '45.6 MB', '789 KB'."""
    return f"{n / GB:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def largest_tensor(shape: Shape) -> int:
    """Elements of the largest weight: the embedding or head table, or an MLP projection."""
    return max(shape.embed, shape.head, shape.hidden * shape.intermediate)


def activation_bytes(shape: Shape, prompt_len: int, batch: int) -> int:
    """Perplexity's logits window (FP32 logits and their log-softmax) or the largest prompt pass, the larger."""
    ppl = 3 * PPL_WINDOW * shape.vocab * 4
    prompt = batch * prompt_len * (4 * shape.hidden + 3 * shape.intermediate) * 4
    return int(max(ppl, prompt))


def parse_bytes(text: str) -> int:
    s = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    try:
        return int(float(s[:-1] if mult > 1 else s) * mult)
    except ValueError as e:
        raise SlimError(f"{LIMIT_ENV}={text!r} is not a size", f"e.g. {LIMIT_ENV}=6G or a number of bytes") from e


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_free() -> tuple[int, str] | None:
    """What the cgroup still allows (limit - usage + inactive page cache), v2 or v1; None without a limit."""
    rel = ""
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            rel = line[3:].strip()
    for base in dict.fromkeys([f"/sys/fs/cgroup{rel}".rstrip("/"), "/sys/fs/cgroup"]):
        limit = _read(f"{base}/memory.max")
        if limit is not None:
            if limit == "max":
                return None
            used = int(_read(f"{base}/memory.current") or 0)
            return int(limit) - used + _stat(f"{base}/memory.stat", "inactive_file"), f"cgroup v2 memory.max {int(limit) / GB:.1f} GB"
    limit = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit is not None and int(limit) < 1 << 60:
        used = int(_read("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0)
        return (int(limit) - used + _stat("/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
                f"cgroup v1 memory.limit_in_bytes {int(limit) / GB:.1f} GB")
    return None


def _stat(path: str, key: str) -> int:
    for line in (_read(path) or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def available() -> tuple[int, str]:
    """(bytes this process can still allocate, where that figure comes from)."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        return parse_bytes(env), LIMIT_ENV
    found = []
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            found.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    cg = _cgroup_free()
    if cg:
        found.append(cg)
    return min(found) if found else (1 << 62, "unknown (no /proc/meminfo)")


def as_dict(shape: Shape) -> dict:
    return asdict(shape)


def spec_shape(spec: str) -> Shape | None:
    """The Shape of the causal LM at `spec` (a .gguf file: from its header, which is checked for
    truncation; hf:DIR: from its config.json) without loading weights; None if it cannot be read
    here (the loader then says why)."""
    from .gguf_header import read_header
    from .load import gguf_of

    gguf = gguf_of(spec)
    if gguf:
        return shape_from_gguf(read_header(gguf))
    folder = spec[3:] if spec.startswith("hf:") else None
    if not folder or not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    import transformers

    try:
        cfg = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        return shape_from_config(cfg)
    except Exception:  # noqa: BLE001 - an unusual config: the loader reports it, the plan is made after loading
        return None


def check_context(shape: Shape | None, prompt_len: int, new_tokens: int) -> None:
    """--prompt-len + --new-tokens within the model's context, or SlimError (before any loading)."""
    ctx, need = shape.context if shape else None, prompt_len + new_tokens
    if ctx is not None and need > ctx:
        raise SlimError(f"--prompt-len {prompt_len} + --new-tokens {new_tokens} = {need} tokens exceeds the model's "
                        f"context of {ctx} ({shape.source})", f"keep prompt + new tokens within {ctx}")


def preflight(spec: str, config) -> dict | None:
    """Before loading `spec`: its GGUF header checked, --prompt-len + --new-tokens against its context,
    and the memory plan (make_plan; SlimError where nothing fits). None where the shape cannot be read
    without loading (the plan is then made from the loaded model's config)."""
    from .load import gguf_cached, gguf_of

    shape = spec_shape(spec)
    check_context(shape, config.prompt_len, config.new_tokens)
    if shape is None:
        return None
    gguf = gguf_of(spec)
    return make_plan(shape, config.prompt_len, config.new_tokens, config.batch_size, config.large_batch,
                     convert_gguf=bool(gguf) and not (gguf_cached(gguf) or gguf_cached(gguf, "bf16")))


def make_plan(shape: Shape, prompt_len: int, new_tokens: int, batch: int, large_batch: int, convert_gguf: bool = False,
              limit: tuple[int, str] | None = None, baseline: str | None = None) -> dict:
    """The plan: bytes at each precision, KV cache, activations, and the baseline's precision: FP32
    eager when it fits in what is available, else BF16; SlimError (one line, what would help) when
    not even BF16 fits. Nothing is allocated. `baseline`: the dtype of a model already loaded."""
    avail, source = limit or available()
    budget = int(avail * HEADROOM)
    tokens, big = prompt_len + new_tokens, max(batch, large_batch or 0)
    act = activation_bytes(shape, prompt_len, big)

    def need(dtype: str) -> dict:
        w = weights_bytes(shape, dtype)
        kv = kv_cache_bytes(shape, tokens, big, BYTES[dtype])
        # loading: safetensors are memory-mapped (one materialized copy); a GGUF is dequantized by transformers
        # one tensor at a time into FP32 numpy (+ its np.copy), cast to `dtype` in the state dict and saved as
        # safetensors: the weights + two FP32 copies of the largest tensor (measured on Qwen2.5-Coder-1.5B
        # Q4_K_M: 9.08 GB FP32, 5.68 GB BF16 peak RSS; this predicts 8.98 and 5.42)
        load = w + 2 * 4 * largest_tensor(shape) if convert_gguf else w
        return {"weights": w, "kv_cache": kv, "activations": act, "load_peak": load, "total": max(load, w + kv + act)}

    fp32, bf16 = need("fp32"), need("bf16")
    gb = size
    if baseline is not None:
        dtype, why = baseline, f"the model was given loaded in {baseline.upper()}"
    elif fp32["total"] <= budget:
        dtype, why = "fp32", f"FP32 eager fits: needs {gb(fp32['total'])} of {gb(budget)} usable"
    elif bf16["total"] <= budget:
        dtype, why = "bf16", (f"FP32 would need {gb(fp32['total'])}, more than the {gb(budget)} usable here ({source}): "
                              f"the baseline is BF16 eager ({gb(bf16['total'])})")
    else:
        kv_share = bf16["kv_cache"] / max(1, bf16["total"])
        hints = (["a shorter --prompt-len/--new-tokens or a smaller --batch-size/--large-batch (the KV cache is "
                  f"{gb(bf16['kv_cache'])})"] if kv_share > 0.2 else []) + \
            ["the GGUF as it is through llama.cpp (llama-cli -m model.gguf: it runs quantized weights without dequantizing)",
             f"a machine with more than {gb(bf16['total'] / HEADROOM)} of free memory"]
        raise SlimError(f"the model does not fit even in BF16: {shape.params / 1e9:.2f}B parameters need {gb(bf16['total'])} "
                        f"(weights {gb(bf16['weights'])}, KV cache {gb(bf16['kv_cache'])}, activations {gb(act)}) and "
                        f"{gb(budget)} is usable ({gb(avail)} available: {source}); nothing was loaded", "; or ".join(hints))
    return {"available_bytes": avail, "available_source": source, "usable_bytes": budget, "headroom": HEADROOM,
            "shape": as_dict(shape), "tokens": tokens, "batches": sorted({batch, large_batch or batch}),
            "weights_bytes": {"fp32": fp32["weights"], "bf16": bf16["weights"], "int8": weights_bytes(shape, "bf16", "int8"),
                              "int4-g32": weights_bytes(shape, "bf16", "int4")},
            "kv_cache_bytes": {"fp32": fp32["kv_cache"], "bf16": bf16["kv_cache"]}, "activations_bytes": act,
            "baseline": {"dtype": dtype, "why": why, "bytes": (fp32 if dtype == "fp32" else bf16)["total"],
                         "load_peak_bytes": (fp32 if dtype == "fp32" else bf16)["load_peak"],
                         "weights_bytes": (fp32 if dtype == "fp32" else bf16)["weights"]},
            "recipes": {}}


def fits(plan: dict, est: Estimate, kept_so_far: int) -> str | None:
    """None if `est` fits beside the baseline and the recipes kept so far, else the skip reason."""
    resident = plan["baseline"]["weights_bytes"] + kept_so_far + plan["activations_bytes"]
    if resident + est.peak <= plan["usable_bytes"]:
        return None
    return (f"memory: its peak would need ~{size(est.peak)} ({est.detail}) beside {size(resident)} held "
            f"(baseline + recipes kept for timing), {size(plan['usable_bytes'])} usable ({plan['available_source']})")
