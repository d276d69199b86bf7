"""The weights of a causal LM for generation: BF16, and torchao weight-only INT8/INT4 (or dynamic
INT8, DA8W4) on every nn.Linear, the LM head included; the model stays a Hugging Face model."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..quant import ao
from .. import device as dev
from .base import Context, TechniqueConfig, register

DTYPES = ("fp32", "bf16")
QUANTS = ("none", "int8", "int4", "int8-dynamic", "da8w4")
INT4_GROUPS = (32, 64, 128)
HEADS = ("same", "float", "int8")
PREFILLS = ("same", "bf16")
PREFILL_ATTR = "torchslim_prefill_model"  # where a separate prefill copy waits for lm_decode (not a submodule)


@dataclass(frozen=True)
class LMWeightsConfig(TechniqueConfig):
    """dtype: the compute dtype ('fp32' or 'bf16'). quant: 'none', 'int8' (weight-only, per channel),
    'int4' (weight-only, asymmetric groups of `group_size`), 'int8-dynamic', 'da8w4'. lm_head: the
    output projection as the other layers ('same'), kept in `dtype` ('float'), or INT8 weight-only
    ('int8'); when quantized it is untied from the embedding, which stays in `dtype`. On SmolLM2
    an INT4 head costs +5.7% perplexity, an INT8 head nothing measurable. prefill: 'same' (the
    prompt pass runs on these weights) or 'bf16' (on an unquantized BF16 copy, which lm_decode's
    loop uses for the prompt while decode reads the quantized weights: INT4's kernel is slow at M=128)."""

    name = "lm_weights"
    lossy: ClassVar[bool] = True  # BF16 and quantized weights change the numerics
    speeds_up: ClassVar[str] = "decode"  # the class default; each instance sets its own in __post_init__
    dtype: str = "bf16"
    quant: str = "none"
    group_size: int = 32
    lm_head: str = "same"
    prefill: str = "same"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.quant not in QUANTS:
            raise ValueError(f"quant must be one of {QUANTS}, got {self.quant!r}")
        if self.group_size not in INT4_GROUPS:
            raise ValueError(f"group_size must be one of {INT4_GROUPS}, got {self.group_size!r}")
        if self.lm_head not in HEADS:
            raise ValueError(f"lm_head must be one of {HEADS}, got {self.lm_head!r}")
        if self.quant in ("int4", "int8", "da8w4") and self.dtype != "bf16":
            raise ValueError(f"weight-only {self.quant} runs with BF16 activations (the CPU kernels' fast path): use dtype='bf16'")
        if self.prefill not in PREFILLS:
            raise ValueError(f"prefill must be one of {PREFILLS}, got {self.prefill!r}")
        if self.prefill != "same" and (self.quant == "none" or self.dtype != "bf16"):
            raise ValueError("a separate BF16 prefill copy goes with quantized BF16 weights (the KV cache is shared)")
        # fewer bytes per token (weight-only) speed up decode; 16-bit or INT8 matmuls also the prompt pass
        parts = {"none": "both", "int8": "decode", "int4": "decode", "int8-dynamic": "prefill", "da8w4": "both"}[self.quant]
        object.__setattr__(self, "speeds_up", "both" if self.prefill != "same" else parts)

    def label(self) -> str:
        if self.quant == "none":
            return self.dtype
        q = {"int4": f"int4-g{self.group_size}", "int8": "int8", "int8-dynamic": "int8-dyn",
             "da8w4": f"da8w4-g{self.group_size}"}[self.quant]
        return q + ("-wo" if self.quant in ("int4", "int8") else "") + (f"-{self.dtype}" if self.dtype != "fp32" else "") \
            + {"same": "", "float": "-headfloat", "int8": "-head8"}[self.lm_head] \
            + ("" if self.prefill == "same" else f"-prefill{self.prefill}")


def is_causal_lm(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return hasattr(model, "generate") and cfg is not None and not getattr(cfg, "is_encoder_decoder", False)


def da8w4_missing() -> str | None:
    """None where torchao's DA8W4 CPU kernel is built and the CPU has AMX-INT8, else why not."""
    if "amx_int8" not in dev.cpu_flags():
        return "DA8W4 needs a CPU with AMX-INT8"
    why = ao.torchao_importable()
    if why:
        return why
    import torch

    if "CPU" not in torch._C._dispatch_dump("torchao::da8w4_linear_cpu"):
        return "torchao's da8w4_linear_cpu kernel is not built in this torchao (its PyPI wheel has no CPU extension)"
    return None


def take_prefill_model(model: nn.Module) -> nn.Module | None:
    """The separate prefill copy lm_weights(prefill=...) left on `model` (removed from it), or None."""
    return model.__dict__.pop(PREFILL_ATTR, None)


def _linears(model: nn.Module, cfg: LMWeightsConfig) -> list[str]:
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or ao.is_torchao_tensor(m.weight):
            continue
        if _is_head(name) and cfg.lm_head != "same":
            continue
        if cfg.quant in ("int4", "da8w4") and (m.in_features % cfg.group_size or m.out_features % 16):
            continue
        out.append(name)
    return out


def _is_head(name: str) -> bool:
    return name.split(".")[-1] == "lm_head"


def _applies(model, cfg: LMWeightsConfig, ctx: Context):
    if not is_causal_lm(model):
        return "not a Hugging Face causal LM (needs .generate and .config)"
    if any(p.dtype not in (torch.float32,) for p in model.parameters() if p.is_floating_point()):
        return "the weights are no longer FP32 (apply lm_weights first)"
    if cfg.dtype == "bf16" and not dev.supports_bf16(ctx.device):
        return f"no fast BF16 on this {ctx.device.type} (needs AVX512-BF16/AMX or an Ampere+ GPU)"
    if cfg.quant != "none":
        why = ao.torchao_importable()
        if why:
            return why
    if cfg.quant == "int4" and ctx.device.type == "cpu" and not ao.int4_cpu_kernel_ok():
        return "aten._weight_int4pack_mm_for_cpu is missing or failed its check here"
    if cfg.quant == "da8w4":
        why = da8w4_missing()
        if why:
            return why
    if cfg.quant != "none" and not _linears(model, cfg):
        return "no nn.Linear fits the kernel's shape rules"
    return None


# Kernels reached on CPU (checked with the profiler, BENCHMARKS.md "Text generation"):
# - int4: torchao's Int4OpaqueTensor (prototype Int4WeightOnlyConfig for CPU) -> aten._weight_int4pack_mm_for_cpu,
#   eager and compiled; BF16 activations (its FP32 path is 25-70x slower); slow at M=128 (prefill).
# - int8: torchao Int8WeightOnlyConfig -> aten._weight_int8pack_mm under torch.compile with BF16 activations.
# - int8-dynamic: per-token INT8 activations x INT8 weights; pays off compiled, for prefill and larger batches.
# - da8w4: torchao's prototype Int8DynamicActivationInt4WeightConfig -> torchao::da8w4_linear_cpu (AMX), a
#   kernel of torchao's own C++ extension, which torchao 0.18's PyPI wheel does not ship for CPU.
# Decode at batch 1 is bound by the bytes of weights read per token: INT4 reads ~1/8 of FP32.
@register(LMWeightsConfig, applies=_applies)
def apply_lm_weights(model, cfg: LMWeightsConfig, ctx: Context):
    names = set(_linears(model, cfg)) if cfg.quant != "none" else set()
    heads = {n for n, m in model.named_modules() if _is_head(n) and isinstance(m, nn.Linear)}
    int8_head = heads if cfg.quant != "none" and cfg.lm_head == "int8" else set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and (int8_head or any(_is_head(n) for n in names)):
        # tied to the embedding: give the head its own weight so only the head is quantized
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        ctx.notes.append("lm_head untied from the embedding (quantized; the embedding table stays float)")
    if cfg.dtype == "bf16":
        model = model.to(torch.bfloat16)
    twin = copy.deepcopy(model).to(torch.bfloat16) if cfg.prefill == "bf16" else None
    flt = (lambda m, fqn: fqn in names) if names else None
    if cfg.quant == "int4":
        ao.int4_weight_only(model, flt, cfg.group_size, hqq=False, device=ctx.device)
    elif cfg.quant == "int8":
        ao.int8_weight_only(model, flt, None)
    elif cfg.quant == "int8-dynamic":
        ao.int8_dynamic(model, flt)
    elif cfg.quant == "da8w4":
        with ao.quiet():
            from torchao.prototype.quantization.int4.inference_workflow import Int8DynamicActivationInt4WeightConfig
            from torchao.quantization import quantize_

            quantize_(model, Int8DynamicActivationInt4WeightConfig(group_size=cfg.group_size), filter_fn=flt)
    if int8_head:
        ao.int8_weight_only(model, lambda m, fqn: fqn in int8_head, None)
        ctx.notes.append("lm_head: INT8 weight-only")
    if names:
        ctx.notes.append(f"{cfg.label()}: {len(names)} Linear layers quantized")
    if twin is not None:
        model.__dict__[PREFILL_ATTR] = twin  # plain attribute: not in state_dict(), not saved by save_pretrained()
        ctx.notes.append("prompt pass on a separate BF16 copy of the weights (lm_decode's loop uses it)")
    ctx.details["lm_weights"] = {"quantized": sorted(names | int8_head), "dtype": cfg.dtype, "quant": cfg.quant}
    return model
