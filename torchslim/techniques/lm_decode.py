"""Static KV cache + a compiled decode step (the gpt-fast recipe) for a causal LM's greedy generate():
the model is wrapped in generation.runner.GreedyLM."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Context, TechniqueConfig, register
from .lm_weights import is_causal_lm, take_prefill_model

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
