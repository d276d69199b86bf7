"""torchao FP8 (e4m3) dynamic quantization of nn.Linear for NVIDIA GPUs of compute capability 8.9+
(torch._scaled_mm); refused with the reason on CPUs and older GPUs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import ao
from .ao_dynamic import float_note, name_filter, record, select_linears, size_note
from .base import Context, TechniqueConfig, register
from .predicates import check_common, torchao_missing
from .low_precision import CastIO

MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class AoFloat8Config(TechniqueConfig):
    """skip / min_features: as for ao_int8_dynamic. FP8 GEMMs need both Linear dimensions to be
    multiples of 16; other Linears stay in BF16 (listed in the report). Weights get one scale per
    output row, activations one per token per call; torchao's per-row scaling takes BF16 weights, so
    the whole model runs in BF16 behind a cast that keeps FP32 inputs and outputs. Like
    ao_int8_dynamic, it pays off under torch.compile (the activation quantization is fused)."""

    name = "ao_float8"
    lossy = True
    per_layer_skip = True  # has skip=, as the INT8 torchao techniques
    skip: tuple[str, ...] = ()
    min_features: int = 16

    def __post_init__(self):
        check_common(self.skip, self.min_features)

    def label(self) -> str:
        return "fp8-dynamic"


def fp8_missing(device: torch.device) -> str | None:
    """None where FP8 GEMMs run on `device`, else why not."""
    if device.type != "cuda":
        return "FP8 GEMMs need an NVIDIA GPU of compute capability 8.9+ (Ada/Hopper); this is a CPU"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return f"FP8 GEMMs need compute capability 8.9+; this GPU has {cap[0]}.{cap[1]}"
    return None


def _shape_ok(name, m) -> str | None:
    if m.in_features % 16 or m.out_features % 16:
        return f"{m.in_features}->{m.out_features} features: FP8 GEMMs need multiples of 16"
    return None


def _applies(model, cfg: AoFloat8Config, ctx: Context):
    why = fp8_missing(ctx.device) or torchao_missing(model)
    if why:
        return why
    chosen, _ = select_linears(model, cfg.skip, cfg.min_features, _shape_ok)
    return None if chosen else "no nn.Linear layer qualifies for FP8 (see min_features, skip, multiples of 16)"


@register(AoFloat8Config, applies=_applies)
def apply_ao_float8(model, cfg: AoFloat8Config, ctx: Context):
    from ..measure import serialized_bytes

    chosen, skipped = select_linears(model, cfg.skip, cfg.min_features, _shape_ok)
    note = float_note(model, chosen, "fp8-dynamic covers nn.Linear; the rest runs in BF16")
    before = serialized_bytes(model)
    model = ao.float8_dynamic(model.to(torch.bfloat16), name_filter(chosen))
    after = serialized_bytes(model)
    record(ctx, cfg.name, chosen, skipped, bytes_before=before, bytes_after=after)
    ctx.notes += [n for n in (note, size_note(before, after)) if n]
    return CastIO(model, torch.bfloat16)
