"""Weight-only INT8/INT4 (torchao): Linear weights stored in 8 or 4 bits, activations stay float;
decode kernels: they win where the matmul is memory bound (batch 1-4), lose from batch ~16 up."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import device as dev
from ..quant import ao
from .ao_dynamic import float_note, name_filter, record, select_linears, size_note, tied_note
from .base import Context, TechniqueConfig, register
from .predicates import check_common, torchao_missing
from .low_precision import CastIO

BITS = (4, 8)
GROUP_SIZES = (None, 32, 64, 128, 256)
METHODS = ("rtn", "hqq")
ACTIVATION_DTYPES = ("auto", "fp32", "bf16")
CPU_INT4_GROUPS = (32, 64, 128)  # torchao's CPU INT4 packing takes these only
CPU_INT4_N_MULTIPLE = 16  # aten._convert_weight_to_int4pack_for_cpu: out_features % 16 == 0


@dataclass(frozen=True)
class WeightOnlyConfig(TechniqueConfig):
    """bits: 8 or 4. group_size: None (per output channel; 8-bit only) or 32/64/128/256 (required
    for 4-bit). symmetric: None = the kernel's own mapping (INT8: symmetric; INT4: asymmetric, which
    is what the packed INT4 kernels take); True/False force it, falling back to the size-only path
    where the fast kernel cannot. method: 'rtn' (round to nearest) or 'hqq' (half-quadratic
    optimisation of scales/zeros, 4-bit only). activation_dtype: 'auto' (BF16 where the device has
    fast BF16, else FP32), 'fp32' or 'bf16'. skip / min_features: as for ao_int8_dynamic."""

    name = "weight_only"
    lossy = True
    per_layer_skip = True
    requires = ("native_bf16",)  # the INT8/INT4 weight-only kernels take BF16 activations
    bits: int = 8
    group_size: int | None = None
    symmetric: bool | None = None
    method: str = "rtn"
    activation_dtype: str = "auto"
    skip: tuple[str, ...] = ()
    min_features: int = 16

    def __post_init__(self):
        if self.bits not in BITS:
            raise ValueError(f"bits must be 4 or 8, got {self.bits!r}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {self.group_size!r}")
        if self.bits == 4 and self.group_size is None:
            raise ValueError("4-bit weight-only needs a group_size (32, 64, 128 or 256)")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "hqq" and self.bits != 4:
            raise ValueError("method 'hqq' is available for 4-bit weights only")
        if self.symmetric not in (None, True, False):
            raise ValueError(f"symmetric must be None, True or False, got {self.symmetric!r}")
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"activation_dtype must be one of {ACTIVATION_DTYPES}, got {self.activation_dtype!r}")
        check_common(self.skip, self.min_features)

    def label(self) -> str:
        s = f"int{self.bits}-weight-only"
        if self.group_size is not None:
            s += f"-g{self.group_size}"
        if self.method != "rtn":
            s += f"-{self.method}"
        if self.symmetric is not None:
            s += "-sym" if self.symmetric else "-asym"
        if self.activation_dtype != "auto":
            s += f"-{self.activation_dtype}"
        return s


@dataclass(frozen=True)
class Plan:
    kernel: str  # "int8" | "int4-cpu" | "int4-cuda" | "intx"
    act: torch.dtype
    why_slow: str | None = None  # set where the result gains size only


# Kernels, by case (ctx.details["weight_only"]["kernel"] says which ran):
# - INT8: torchao Int8WeightOnlyConfig (symmetric, per channel or per group). With BF16 activations
#   and torch.compile, Inductor lowers it to aten._weight_int8pack_mm (fast at batch 1). With FP32
#   activations there is no INT8 weight-only kernel: freezing folds the weight back to FP32 (size only).
# - INT4 (groups of 32/64/128): a tinygemm-packed layout (asymmetric: scale and zero per group) run by
#   aten._weight_int4pack_mm_for_cpu on CPU, aten._weight_int4pack_mm on CUDA (sm80+). Both need BF16
#   activations to be fast (on CPU the FP32 path of that kernel is 25-50x slower than FP32 eager),
#   so the whole model runs in BF16 behind a cast that keeps FP32 inputs and outputs.
# - Otherwise (no BF16, group 256 on CPU, symmetric INT4 asked for, kernel missing): torchao's
#   portable IntxWeightOnlyConfig, one value per int8 byte, dequantized per call: size only.
def plan(cfg: WeightOnlyConfig, device: torch.device) -> Plan:
    """Which torchao path runs this config on `device`, in which activation dtype."""
    if cfg.activation_dtype == "auto":
        act = torch.bfloat16 if dev.supports_bf16(device) else torch.float32
    else:
        act = torch.bfloat16 if cfg.activation_dtype == "bf16" else torch.float32
    if cfg.bits == 8:
        if cfg.symmetric is False:
            return Plan("intx", act, "torchao's INT8 weight-only kernels are symmetric only")
        if act != torch.bfloat16:
            return Plan("int8", act, "no INT8 weight-only kernel takes FP32 activations")
        return Plan("int8", act)
    if cfg.symmetric is True:
        return Plan("intx", act, "the packed INT4 kernels take asymmetric weights only")
    if act != torch.bfloat16:
        return Plan("intx", act, "the INT4 kernels need BF16 activations")
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device)[0] < 8:
            return Plan("intx", act, "the CUDA INT4 kernel needs an sm80+ GPU")
        return Plan("int4-cuda", act)
    if cfg.group_size not in CPU_INT4_GROUPS:
        return Plan("intx", act, f"the CPU INT4 kernel takes groups of {'/'.join(map(str, CPU_INT4_GROUPS))}")
    if not ao.int4_cpu_kernel_ok():
        return Plan("intx", act, "aten._weight_int4pack_mm_for_cpu is missing or failed its check here")
    return Plan("int4-cpu", act)


def _layer_check(cfg: WeightOnlyConfig, p: Plan):
    def check(name: str, m: nn.Linear) -> str | None:
        if cfg.group_size is not None and m.in_features % cfg.group_size:
            return f"in_features {m.in_features} not divisible by group_size {cfg.group_size}"
        if p.kernel == "int4-cpu" and m.out_features % CPU_INT4_N_MULTIPLE:
            return f"out_features {m.out_features} not a multiple of {CPU_INT4_N_MULTIPLE} (CPU INT4 packing)"
        return None

    return check


def _applies(model, cfg: WeightOnlyConfig, ctx: Context):
    why = torchao_missing(model)
    if why:
        return why
    if ctx.device.type not in ("cpu", "cuda"):
        return f"torchao weight-only kernels run on CPU or CUDA, not {ctx.device.type}"
    if cfg.activation_dtype == "bf16" and not dev.supports_bf16(ctx.device):
        return f"{ctx.device.type} here has no fast BF16 for the activations"
    p = plan(cfg, ctx.device)
    if p.act == torch.bfloat16 and any(t.dtype == torch.float16 for t in model.parameters()):
        return "the model is already in FP16 and this path runs it in BF16: apply weight-only before any FP16 cast"
    chosen, skipped = select_linears(model, cfg.skip, cfg.min_features, _layer_check(cfg, p))
    if not chosen:
        reasons = sorted(set(skipped.values()))
        return "no nn.Linear fits: " + "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    return None


@register(WeightOnlyConfig, applies=_applies)
def apply_weight_only(model, cfg: WeightOnlyConfig, ctx: Context):
    from ..measure import serialized_bytes

    p = plan(cfg, ctx.device)
    chosen, skipped = select_linears(model, cfg.skip, cfg.min_features, _layer_check(cfg, p))
    bf16 = p.act == torch.bfloat16
    note = float_note(model, chosen, f"{cfg.label()} covers nn.Linear" + ("; the whole model runs in BF16" if bf16 else ""))
    tied = tied_note(model, chosen)
    before = serialized_bytes(model)
    if bf16:
        model = model.to(torch.bfloat16)
    flt = name_filter(chosen)
    hqq = cfg.method == "hqq"
    if p.kernel == "int8":
        ao.int8_weight_only(model, flt, cfg.group_size)
    elif p.kernel in ("int4-cpu", "int4-cuda"):
        ao.int4_weight_only(model, flt, cfg.group_size, hqq=hqq, device=ctx.device)
    else:
        sym = cfg.symmetric if cfg.symmetric is not None else cfg.bits == 8
        ao.intx_weight_only(model, flt, cfg.bits, cfg.group_size, symmetric=sym, hqq=hqq)
    after = serialized_bytes(model)
    if bf16:
        model = CastIO(model, torch.bfloat16)
    record(ctx, cfg.name, chosen, skipped, kernel=p.kernel, activation_dtype=str(p.act).removeprefix("torch."),
           bytes_before=before, bytes_after=after)
    ctx.notes += [n for n in (note, tied) if n]
    if skipped:
        ctx.notes.append(f"{len(skipped)} of {len(chosen) + len(skipped)} Linear layers kept in float "
                         f"(see details: e.g. {next(iter(skipped.items()))[1]})")
    if p.why_slow:
        ctx.notes.append(f"no fast INT{cfg.bits} weight-only kernel on this device ({p.why_slow}): the gain is size only")
    ctx.notes.append(size_note(before, after))
    return model
