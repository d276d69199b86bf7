"""torchao dynamic INT8 (per-token activations, per-channel weights) on nn.Linear, and the layer
selection helpers the torchao techniques share (weight_only.py, ao_float8.py)."""
from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..quant import ao
from .base import Context, TechniqueConfig, register
from .predicates import check_common, torchao_missing


@dataclass(frozen=True)
class AoInt8DynamicConfig(TechniqueConfig):
    """skip: fnmatch patterns on module names (e.g. 'classifier', '*.pooler.*') kept in float; names
    are the user's model's own (wrapper prefixes such as 'inner.' are ignored).
    min_features: Linears with fewer input or output features stay float (INT8 does not pay off).
    Eager, torchao runs reference ops, slower than FP32 (0.5-0.7x on a 2-core AMX Xeon); under
    torch.compile Inductor emits aten._int_mm (oneDNN INT8 GEMM): compose as [ao_int8_dynamic, compile]."""

    name = "ao_int8_dynamic"
    lossy = True
    per_layer_skip = True
    skip: tuple[str, ...] = ()
    min_features: int = 16

    def __post_init__(self):
        check_common(self.skip, self.min_features)

    def label(self) -> str:
        return "ao-int8-dynamic"


# ---- shared with weight_only.py ----

def select_linears(model: nn.Module, skip: tuple[str, ...], min_features: int,
                   extra: Callable[[str, nn.Linear], str | None] | None = None) -> tuple[list[str], dict[str, str]]:
    """Split the model's nn.Linear layers into (names to quantize, {name: why kept in float})."""
    chosen, skipped = [], {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        why = _why_not(name, m, skip, min_features, extra)
        if why:
            skipped[name] = why
        else:
            chosen.append(name)
    return chosen, skipped


def display_name(fqn: str) -> str:
    """The module name as the user's model spells it: without the 'inner.' / '_orig_mod.' prefixes
    that earlier wrapping steps (casts, inference mode, torch.compile) add."""
    while fqn.startswith(("inner.", "_orig_mod.")):
        fqn = fqn.split(".", 1)[1]
    return "" if fqn in ("inner", "_orig_mod") else fqn


def _why_not(name, m: nn.Linear, skip, min_features, extra) -> str | None:
    user = display_name(name)
    pat = next((p for p in skip if fnmatch.fnmatchcase(user, p) or fnmatch.fnmatchcase(name, p)), None)
    if pat is not None:
        return f"matches skip pattern {pat!r}"
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        return "has no weight tensor"
    if ao.is_torchao_tensor(w):
        return "weight already quantized by torchao"
    if not w.is_floating_point() or type(w) not in (torch.Tensor, nn.Parameter):
        return f"weight is {type(w).__name__}/{w.dtype}, not a plain float tensor"
    if min(m.in_features, m.out_features) < min_features:
        return f"{m.in_features}->{m.out_features} features, below min_features={min_features}"
    return extra(name, m) if extra else None


def name_filter(names: list[str]):
    """A quantize_ filter_fn that takes exactly the named modules."""
    wanted = set(names)
    return lambda module, fqn: fqn in wanted and isinstance(module, nn.Linear)


def float_note(model: nn.Module, chosen: list[str], covered: str) -> str | None:
    """One line naming the weighted layer types that stay in float (call before quantizing)."""
    wanted = set(chosen)
    chosen_ids = {id(m) for n, m in model.named_modules() if n in wanted}
    counts = Counter(
        type(m).__name__ for m in model.modules()
        if id(m) not in chosen_ids and not list(m.children())
        and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.is_floating_point()
    )
    if not counts:
        return None
    return ("left in float: " + ", ".join(f"{n} x{c}" for n, c in sorted(counts.items()))
            + f" ({covered})")


def tied_note(model: nn.Module, chosen: list[str]) -> str | None:
    """Chosen Linears whose weight is shared with another module (tied embeddings): quantizing
    unties them, the other module keeps the float tensor, and the file grows by the quantized copy."""
    owners: dict[int, list[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, p in mod.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(display_name(f"{mod_name}.{p_name}" if mod_name else p_name))
    modules = dict(model.named_modules(remove_duplicate=False))
    tied = []
    for n in chosen:
        users = owners.get(id(modules[n].weight), [])
        others = [u for u in users if u != display_name(f"{n}.weight" if n else "weight")]
        if others:
            tied.append(f"{display_name(n)} (shared with {others[0]})")
    if not tied:
        return None
    return "tied weights untied by quantization (the float copy stays for the other user): " + ", ".join(tied)


def record(ctx: Context, key: str, chosen: list[str], skipped: dict[str, str], **extra) -> None:
    ctx.details[key] = {"quantized": [display_name(n) for n in chosen],
                        "skipped": {display_name(n): why for n, why in skipped.items()}, **extra}


def size_note(before: int, after: int) -> str:
    return f"weights on disk: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / max(before, 1):.2f}x)"


# ---- the technique ----

def _applies(model, cfg: AoInt8DynamicConfig, ctx: Context):
    why = torchao_missing(model)
    if why:
        return why
    if ctx.device.type not in ("cpu", "cuda"):
        return f"torchao INT8 kernels run on CPU or CUDA, not {ctx.device.type}"
    chosen, skipped = select_linears(model, cfg.skip, cfg.min_features)
    if not chosen:
        return "every nn.Linear is kept in float: " + "; ".join(
            f"{display_name(n) or '<root>'}: {w}" for n, w in list(skipped.items())[:3])
    return None


@register(AoInt8DynamicConfig, applies=_applies)
def apply_ao_int8_dynamic(model, cfg: AoInt8DynamicConfig, ctx: Context):
    from ..measure import serialized_bytes

    chosen, skipped = select_linears(model, cfg.skip, cfg.min_features)
    note = float_note(model, chosen, "ao-int8-dynamic covers nn.Linear")
    tied = tied_note(model, chosen)
    before = serialized_bytes(model)
    model = ao.int8_dynamic(model, name_filter(chosen))
    after = serialized_bytes(model)
    record(ctx, cfg.name, chosen, skipped, bytes_before=before, bytes_after=after)
    ctx.notes += [n for n in (note, tied) if n]
    ctx.notes.append(size_note(before, after))
    return model
