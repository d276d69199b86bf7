"""The weights of a causal LM for generation: BF16, and torchao weight-only INT8/INT4 (or dynamic
INT8, DA8W4) on every nn.Linear, the LM head included; or, for CPUs without native BF16, an FP32 model
whose Linear weights are INT4 or FP16 (each such Linear casts its input to its kernel's 16-bit dtype and
its output back to FP32) or INT8 with dynamic per-token INT8 activations (fbgemm, SmoothQuant-balanced
on calibration text); the model stays a Hugging Face model."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..quant import ao, fbgemm
from .. import device as dev
from .base import Context, TechniqueConfig, register

DTYPES = ("fp32", "bf16")
QUANTS = ("none", "int8", "int4", "int8-dynamic", "da8w4", "fp16", "int8-sq")
SQ_ALPHA = 0.65  # SmoothQuant migration strength: +0.48% perplexity on SmolLM2 (0.5: +1.1%, 0.8: +5.0%, none: +8 to +11%)
INT4_GROUPS = (32, 64, 128)
HEADS = ("same", "float", "int8", "fp16", "int8-sq")
PREFILLS = ("same", "bf16", "fp32", "int8-sq")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERNEL_DTYPE_ATTR = "torchslim_kernel_dtype"  # on a Linear whose kernel runs in another dtype than the model
PREFILL_ATTR = "torchslim_prefill_model"  # where a separate prefill copy waits for lm_decode (not a submodule)
QUANTIZED_PREFILL_ATTR = "torchslim_quantized_prefill"  # set on a prefill copy whose weights are quantized too


@dataclass(frozen=True)
class LMWeightsConfig(TechniqueConfig):
    """dtype: the compute dtype ('fp32' or 'bf16'). quant: 'none', 'int8' (weight-only, per channel),
    'int4' (weight-only, asymmetric groups of `group_size`), 'int8-dynamic', 'da8w4'. lm_head: the
    output projection as the other layers ('same'), kept in `dtype` ('float'), INT8 weight-only
    ('int8') or FP16 ('fp16', FP32 models only); when quantized it is untied from the embedding, which
    stays in `dtype`. On SmolLM2 an INT4 head costs +5.7% perplexity, an INT8 head nothing measurable.
    prefill: 'same' (the prompt pass runs on these weights), 'bf16' / 'fp32' (on an unquantized copy
    in `dtype`, which lm_decode's loop uses for the prompt while decode reads the quantized weights:
    INT4's kernel is slow at M=128, FP16's without AVX512-FP16/AMX too), 'int8-sq' (FP32 models: on a
    copy whose Linears are fbgemm dynamic INT8, as quant='int8-sq': a quarter of FP32's bytes, the same
    time to first token on a 2-core AVX2 CPU; the generation search checks perplexity on both copies).
    FP32 models (hosts without native BF16): quant='int4' keeps the model FP32 (norms, attention, KV
    cache) and casts each INT4 Linear's input to BF16 for aten._weight_int4pack_mm_for_cpu (its FP32
    path is ~6.5x slower on an AVX2 host, its BF16 path is not); quant='fp16' stores the Linear
    weights in FP16 (half of FP32's bytes per token) and runs them through ATen's FP16 GEMV with FP32
    accumulation (F16C), inputs cast to FP16; quant='int8-sq' replaces each Linear with fbgemm's dynamic
    INT8 Linear (quant.fbgemm: INT8 per-channel weights, each token's activations quantized on the fly,
    7-bit without VNNI), SmoothQuant-balanced (alpha SQ_ALPHA) on the calibration text the caller puts
    in ctx.calibration (batches of model keyword arguments); on an AVX2 CPU the fastest decode kernel
    with FP32 activations (2.96x FP32 F.linear at batch 1, INT4 1.98x, FP16 1.73x)."""

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
        if self.quant in ("int8", "da8w4") and self.dtype != "bf16":
            raise ValueError(f"weight-only {self.quant} runs with BF16 activations (the CPU kernels' fast path): use dtype='bf16'")
        if self.quant == "int8-sq" and self.dtype != "fp32":
            raise ValueError("quant='int8-sq' (fbgemm dynamic INT8, FP32 activations) is for FP32 models: use dtype='fp32'")
        if self.quant == "fp16" and self.dtype != "fp32":
            raise ValueError("quant='fp16' (FP16 weights, FP32 accumulation) is for FP32 models: use dtype='fp32'")
        if self.lm_head in ("fp16", "int8-sq") and (self.dtype != "fp32" or self.quant == "none"):
            raise ValueError(f"lm_head={self.lm_head!r} goes with quantized weights in an FP32 model (dtype='fp32', quant set)")
        if self.prefill not in PREFILLS:
            raise ValueError(f"prefill must be one of {PREFILLS}, got {self.prefill!r}")
        if self.prefill == "int8-sq":
            if self.dtype != "fp32" or self.quant in ("none", "int8-sq"):
                raise ValueError("prefill='int8-sq' (the prompt pass on fbgemm dynamic INT8) goes with other quantized "
                                 "weights in an FP32 model: dtype='fp32', quant='int4' or 'fp16'")
        elif self.prefill != "same" and (self.quant == "none" or self.dtype != self.prefill):
            raise ValueError(f"a separate prefill copy goes with quantized weights and has the model's dtype (the KV cache "
                             f"is shared): use prefill={self.dtype!r} with a quant")
        # fewer bytes per token (weight-only) speed up decode; 16-bit or INT8 matmuls also the prompt pass
        parts = {"none": "both", "int8": "decode", "int4": "decode", "int8-dynamic": "prefill", "da8w4": "both",
                 "fp16": "decode", "int8-sq": "both"}[self.quant]
        object.__setattr__(self, "speeds_up", "both" if self.prefill != "same" else parts)

    def label(self) -> str:
        if self.quant == "none":
            return self.dtype
        q = {"int4": f"int4-g{self.group_size}", "int8": "int8", "int8-dynamic": "int8-dyn",
             "da8w4": f"da8w4-g{self.group_size}", "fp16": "fp16", "int8-sq": "int8-sq-dyn"}[self.quant]
        return q + ("-wo" if self.quant in ("int4", "int8", "fp16") else "") + (f"-{self.dtype}" if self.dtype != "fp32" else "") \
            + {"same": "", "float": "-headfloat", "int8": "-head8", "fp16": "-head16", "int8-sq": "-head8sq"}[self.lm_head] \
            + ("" if self.prefill == "same" else f"-prefill{self.prefill}")


def is_causal_lm(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return hasattr(model, "generate") and cfg is not None and not getattr(cfg, "is_encoder_decoder", False)


def da8w4_missing() -> str | None:
    """None where torchao's DA8W4 CPU kernel is built and has its fast path here (device.da8w4_fast_path:
    AMX-INT8), else why not (the missing kernel first: it is missing on every CPU)."""
    why = ao.torchao_importable()
    if why:
        return why
    if "CPU" not in torch._C._dispatch_dump("torchao::da8w4_linear_cpu"):
        return "torchao's da8w4_linear_cpu kernel is not built in this torchao (its PyPI wheel has no CPU extension)"
    return dev.da8w4_fast_path()


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


def run_in_dtype(model: nn.Module, names, dtype: torch.dtype) -> None:
    """Each named Linear's weights in `dtype`, its input cast to `dtype` and its output back to FP32
    (forward hooks: the module, its state dict keys and torch.compile's view of it stay as they are)."""
    for n in names:
        m = model.get_submodule(n)
        m.to(dtype)
        setattr(m, KERNEL_DTYPE_ATTR, dtype)
        m.register_forward_pre_hook(_cast_input)
        m.register_forward_hook(_cast_output)


def _cast_input(module: nn.Module, args: tuple):
    return (args[0].to(getattr(module, KERNEL_DTYPE_ATTR)),) + tuple(args[1:])


def _cast_output(module: nn.Module, args: tuple, out: torch.Tensor):
    return out.to(torch.float32)


def _applies(model, cfg: LMWeightsConfig, ctx: Context):
    if not is_causal_lm(model):
        return "not a Hugging Face causal LM (needs .generate and .config)"
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes == {torch.bfloat16}:  # a BF16 baseline (the memory plan's choice where FP32 does not fit)
        if cfg.dtype != "bf16" or cfg.prefill not in ("same", "bf16"):
            return "the model was loaded in BF16 (FP32 does not fit in memory): FP32-model recipes do not apply"
    elif dtypes - {torch.float32}:
        return "the weights are no longer FP32 (apply lm_weights first)"
    if cfg.dtype == "bf16" and not dev.supports_bf16(ctx.device):
        return f"no fast BF16 on this {ctx.device.type} (needs AVX512-BF16/AMX or an Ampere+ GPU)"
    if cfg.quant != "none":
        why = ao.torchao_importable()
        if why:
            return why
    if cfg.dtype == "fp32" and cfg.quant in ("int4", "fp16") and ctx.device.type != "cpu":
        return f"{cfg.quant.upper()} weights in an FP32 model are for CPUs without native BF16 (on {ctx.device.type}: dtype='bf16')"
    if cfg.quant == "int4" and ctx.device.type == "cpu" and not ao.int4_cpu_kernel_ok():
        return "aten._weight_int4pack_mm_for_cpu is missing or failed its check here"
    if "int8-sq" in (cfg.quant, cfg.prefill, cfg.lm_head):
        if ctx.device.type != "cpu":
            return "fbgemm's dynamic INT8 Linear is a CPU kernel (on a GPU: dtype='bf16' recipes)"
        why = fbgemm.available()
        if why:
            return why
        if ctx.calibration is None:
            return "SmoothQuant needs calibration text (ctx.calibration)"
    if "fp16" in (cfg.quant, cfg.lm_head) and ctx.device.type == "cpu" and "f16c" not in dev.cpu_flags():
        return "FP16 weights need F16C on this CPU (ATen's FP16 GEMV converts with it)"
    if cfg.quant == "da8w4":
        why = da8w4_missing()
        if why:
            return why
    if cfg.quant != "none" and not _linears(model, cfg):
        if not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if not _is_head(n)):
            kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ == "Conv1D"})
            return ("its projections are transformers' Conv1D (GPT-2 style), not nn.Linear: the weight-only kernels "
                    "need nn.Linear") if kinds else "it has no nn.Linear layers besides the LM head"
        return "no nn.Linear fits the kernel's shape rules"
    return None


# Kernels reached on CPU (checked with the profiler, BENCHMARKS.md "Text generation"):
# - int4: torchao's Int4OpaqueTensor (prototype Int4WeightOnlyConfig for CPU) -> aten._weight_int4pack_mm_for_cpu,
#   eager and compiled; BF16 activations (its FP32 path is 25-70x slower on AMX hosts, ~6.5x on AVX2); slow at M=128 (prefill).
# - int8: torchao Int8WeightOnlyConfig -> aten._weight_int8pack_mm under torch.compile with BF16 activations.
# - int8-dynamic: per-token INT8 activations x INT8 weights; pays off compiled, for prefill and larger batches.
# - da8w4: torchao's prototype Int8DynamicActivationInt4WeightConfig -> torchao::da8w4_linear_cpu (AMX), a
#   kernel of torchao's own C++ extension, which torchao 0.18's PyPI wheel does not ship for CPU.
# - int4 / fp16 in an FP32 model (dtype='fp32'; hosts without native BF16): INT4 -> the same
#   aten._weight_int4pack_mm_for_cpu with its input cast to BF16 (fast at M=1 with AVX2 too); FP16 ->
#   aten::mm in FP16 -> ATen's fp16_gemv_trans (FP32 accumulation, F16C) at M=1. Everything else FP32.
# - int8-sq (FP32 models): fbgemm's quantized::linear_dynamic through a torch.library kernel (quant/fbgemm.py),
#   per-token activation scales and SmoothQuant factors as fused elementwise ops around it. At M=1 on AVX2 its
#   kernel is the fastest (2.87x FP32 at 2 threads, INT4 1.73x), but each call crosses Python (~30-50 us x 211
#   per step), so compiled decode ends slower than INT4 (1.96x vs 3.48x FP32 eager); its prompt pass is level with
#   FP32's (TTFT 1.1-1.9x FP32 eager over two runs) in a quarter of the bytes: prefill='int8-sq' with INT4 decode.
# Decode at batch 1 is bound by the bytes of weights read per token: INT4 reads ~1/8 of FP32.
@register(LMWeightsConfig, applies=_applies)
def apply_lm_weights(model, cfg: LMWeightsConfig, ctx: Context):
    names = set(_linears(model, cfg)) if cfg.quant != "none" else set()
    heads = {n for n, m in model.named_modules() if _is_head(n) and isinstance(m, nn.Linear)}
    int8_head = heads if cfg.quant != "none" and cfg.lm_head == "int8" else set()
    fp16_head = heads if cfg.lm_head == "fp16" else set()
    sq_head = heads if cfg.lm_head == "int8-sq" else set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and (int8_head or fp16_head or sq_head or any(_is_head(n) for n in names)):
        # tied to the embedding: give the head its own weight so only the head is quantized
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        ctx.notes.append("lm_head untied from the embedding (quantized; the embedding table stays float)")
    if cfg.dtype == "bf16":
        model = model.to(torch.bfloat16)
    twin = copy.deepcopy(model).to(TORCH_DTYPES.get(cfg.prefill, torch.float32)) if cfg.prefill != "same" else None
    if cfg.prefill == "int8-sq":
        _int8_sq(twin, [n for n, m in twin.named_modules() if isinstance(m, nn.Linear)], ctx)
        twin.__dict__[QUANTIZED_PREFILL_ATTR] = True
    flt = (lambda m, fqn: fqn in names) if names else None
    if cfg.quant == "int4":
        if cfg.dtype == "fp32":  # the model stays FP32; the INT4 kernel gets BF16 inputs (its fast path)
            run_in_dtype(model, names, torch.bfloat16)
        ao.int4_weight_only(model, flt, cfg.group_size, hqq=False, device=ctx.device)
    elif cfg.quant == "fp16":
        run_in_dtype(model, names, torch.float16)
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
    sq = (names if cfg.quant == "int8-sq" else set()) | sq_head
    if sq:  # the body and the head from one calibration pass
        _int8_sq(model, sorted(sq), ctx)
    if sq_head:  # one call per token: fbgemm's Python crossing costs nothing here, half of FP16's bytes do
        ctx.notes.append("lm_head: fbgemm INT8 weights x dynamic INT8 activations (SmoothQuant)")
    if fp16_head:
        run_in_dtype(model, fp16_head, torch.float16)
        ctx.notes.append("lm_head: FP16 weights (FP32 accumulation)")
    if "int8-sq" in (cfg.quant, cfg.prefill):
        ctx.notes.append(f"{'prompt pass: ' if cfg.prefill == 'int8-sq' else ''}INT8 weights x dynamic per-token {7 if dev.seven_bit_int8() else 8}-bit activations (fbgemm), "
                         f"SmoothQuant alpha {SQ_ALPHA} on the calibration text")
    if cfg.dtype == "fp32" and cfg.quant in ("int4", "fp16"):
        ctx.notes.append(f"FP32 model: the {cfg.quant.upper()} Linears cast their inputs to "
                         f"{'BF16' if cfg.quant == 'int4' else 'FP16'} for the kernel, their outputs back to FP32")
    if names:
        ctx.notes.append(f"{cfg.label()}: {len(names)} Linear layers quantized")
    if twin is not None:
        model.__dict__[PREFILL_ATTR] = twin  # plain attribute: not in state_dict(), not saved by save_pretrained()
        ctx.notes.append(f"prompt pass on a separate {cfg.prefill.upper()} copy of the weights (lm_decode's loop uses it)")
    ctx.details["lm_weights"] = {"quantized": sorted(names | int8_head | fp16_head | sq_head), "dtype": cfg.dtype, "quant": cfg.quant}
    return model


def _int8_sq(model: nn.Module, names: list[str], ctx: Context) -> None:
    """Each named Linear -> fbgemm.DynamicInt8Linear, smoothed by its inputs' absmax on the calibration text."""
    amax = fbgemm.input_absmax(model, names, ctx.calibration())
    rr = dev.seven_bit_int8()
    for n in names:
        lin = model.get_submodule(n)
        if n not in amax:
            raise RuntimeError(f"the calibration text never reached {n}")
        model.set_submodule(n, fbgemm.DynamicInt8Linear(lin, rr, fbgemm.smoothing(amax[n], lin.weight, SQ_ALPHA)))
