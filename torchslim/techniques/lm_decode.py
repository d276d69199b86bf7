"""Static KV cache + a compiled decode step (the gpt-fast recipe) for a causal LM's greedy generate():
the model is wrapped in generation.runner.GreedyLM."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import device as dev
from .base import Context, TechniqueConfig, register
from .lm_weights import LMWeightsConfig, is_causal_lm, take_prefill_model

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class LMDecodeConfig(TechniqueConfig):
    name = "lm_decode"
    speeds_up: ClassVar[str] = "decode"
    lossy: ClassVar[bool] = False  # the same math in a static cache: the same greedy tokens as generate()
    compile: bool = True  # False: static cache + lean loop, eager
    freezing: bool = True  # Inductor constant-folds the weights (prepacked oneDNN BF16 matmuls; some torchao kernels need it)
    mode: str = "default"  # 'reduce-overhead' adds CUDA graphs (GPU only)
    cpp_wrapper: bool = False  # Inductor's C++ wrapper: less Python per call, longer compile
    compile_prefill: bool = False  # also compile the prompt pass (dynamic shapes)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def generation_candidates(cls, device: torch.device, extended: bool = False) -> list[tuple[TechniqueConfig, ...]]:
        """The text-generation search's recipes (generation/search.candidates), cheapest first (the
        part each speeds up: generation/search.targets()); inapplicable ones are skipped with the
        reason. Each compiled recipe costs a first call of minutes on a small CPU, so the default list
        keeps the ones that won somewhere in our trials (BENCHMARKS.md "Text generation"); `extended`
        adds the rest (FP32 compiled, INT4 with its prompt pass on INT4, INT8 dynamic activations with
        a compiled prefill), also by name."""
        dec, eager = cls(), cls(compile=False)
        out = [(eager,)]
        if dev.supports_bf16(device):
            # INT4 heads cost perplexity (+5.7% on SmolLM2): the head stays BF16 eager (INT8 weight-only
            # has no eager kernel) and INT8 compiled (aten._weight_int8pack_mm). INT4's kernel is slow at
            # M=128 (TTFT 0.79x): the default INT4 recipe runs the prompt on a BF16 copy of the weights.
            out += [(LMWeightsConfig("bf16", "int4", lm_head="float"), eager),
                    (LMWeightsConfig("bf16"), dec),
                    (LMWeightsConfig("bf16", "int8"), dec),
                    (LMWeightsConfig("bf16", "int4", lm_head="int8", prefill="bf16"), dec),
                    (LMWeightsConfig("bf16", "da8w4"), dec)]  # skipped where torchao lacks the kernel
        if extended or not dev.supports_bf16(device):
            # no native BF16 (e.g. AVX2 only): the model stays FP32, decode reads fewer bytes per token: INT4
            # layers through the BF16-input INT4 kernel, the decode step compiled with Inductor's C++ wrapper
            # (no Python between its kernels: 25 vs 29 ms a token on a 2-core AVX2 EPYC; first call up to 3
            # min), the head fbgemm INT8 x dynamic INT8 (SmoothQuant; half of FP16's bytes, one call a token:
            # 23.2 vs 24.7 ms, 4.23x FP32 eager, perplexity +0.1%) or FP16; or FP16 weights everywhere
            # (lossless). All run the prompt on an FP32 copy (their kernels are slower than FP32 at M=128).
            # Extended: fbgemm INT8 for every Linear (1.96x: each call crosses Python) or for the prompt copy
            # (a quarter of FP32's bytes). BENCHMARKS.md "host without native BF16" and 2026-12-07.
            cpp = cls(cpp_wrapper=True)
            out += [(LMWeightsConfig("fp32", "int4", lm_head="int8-sq", prefill="fp32"), cpp),
                    (LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="fp32"), cpp),
                    (LMWeightsConfig("fp32", "fp16", prefill="fp32"), dec)]
        if extended:
            out += [(dec,), (LMWeightsConfig("bf16", "int4", lm_head="int8"), dec),
                    (LMWeightsConfig("bf16", "int4"), eager), (LMWeightsConfig("bf16", "int4"), dec)]
            out += [(LMWeightsConfig("fp32", "int8-dynamic"), cls(compile_prefill=True))]
            out += [(LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="fp32"), dec),
                    (LMWeightsConfig("fp32", "int8-sq"), dec),
                    (LMWeightsConfig("fp32", "int8-sq", lm_head="fp16"), dec),
                    (LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="int8-sq"), dec)]
            # Inductor's C++ GEMM template for the M=1 matmuls (FP32/FP16 weights): 4-6 minutes of compile
            tune = cls(mode="max-autotune-no-cudagraphs")
            out += [(tune,), (LMWeightsConfig("fp32", "fp16", prefill="fp32"), tune),
                    (LMWeightsConfig("fp32", "int4", lm_head="fp16", prefill="fp32"), tune)]
        return out

    def label(self) -> str:
        if not self.compile:
            return "static-cache"
        s = "static-cache+compile"
        if self.mode == "reduce-overhead":
            s += "-cudagraphs"
        elif self.mode == "max-autotune-no-cudagraphs":
            s += "-autotune"  # Inductor's C++ GEMM template (CPU): also M=1 FP32/FP16 GEMVs, minutes of compile
        if self.cpp_wrapper:
            s += "-cpp"
        if not self.freezing:
            s += "-nofreeze"
        if self.compile_prefill:
            s += "+prefill"
        return s


def _applies(model, cfg: LMDecodeConfig, ctx: Context):
    from ..generation.runner import GreedyLM

    if isinstance(model, GreedyLM):
        return "the decode loop is already replaced"
    if not is_causal_lm(model):
        return "not a Hugging Face causal LM (needs .generate and .config)"
    if not getattr(model, "_supports_static_cache", True) or not getattr(model, "_can_compile_fullgraph", True):
        return f"{type(model).__name__} does not support a static KV cache"
    if cfg.mode == "reduce-overhead" and ctx.device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


@register(LMDecodeConfig, applies=_applies)
def apply_lm_decode(model, cfg: LMDecodeConfig, ctx: Context):
    from ..generation.runner import GreedyLM

    opts = {"mode": cfg.mode} if cfg.mode != "default" else {}
    if cfg.cpp_wrapper:
        opts["cpp_wrapper"] = True
    twin = take_prefill_model(model)
    if twin is not None:
        ctx.notes.append("prefill runs on the unquantized copy, decode on the quantized weights (one shared KV cache)")
    out = GreedyLM(model, compile_decode=cfg.compile, compile_prefill=cfg.compile and cfg.compile_prefill,
                   compile_options=opts, freezing=cfg.freezing, prefill_model=twin)
    if out.sliding:
        ctx.notes.append("sliding-window attention layers: the decode step is compiled with automatic dynamic shapes "
                         "(the cache's length) and Dynamo's guards are checked every step")
    return out
