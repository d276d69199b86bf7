"""A technique written in one file outside the package (tests/test_plugin.py): registering it is
all it takes for `optimize` to try it, `--recipes contiguous-weights` to name it, and JSON to load it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from torchslim.techniques import Context, TechniqueConfig, register


@dataclass(frozen=True)
class ContiguousWeightsConfig(TechniqueConfig):
    """Lay every parameter (and, with `buffers`, every buffer) out contiguously: a weight loaded
    transposed or sliced from a larger tensor otherwise makes each matmul read it strided."""

    name = "contiguous_weights"
    buffers: bool = True

    def label(self) -> str:
        return "contiguous-weights"

    @classmethod
    def candidates(cls, device: torch.device) -> list[tuple[TechniqueConfig, ...]]:
        return [(cls(),)]  # wrapped in inference mode by the search, as the built-in recipes are


def applies(model: nn.Module, cfg: ContiguousWeightsConfig, ctx: Context) -> str | None:
    return None if any(True for _ in model.parameters()) else "the model has no parameters"


@register(ContiguousWeightsConfig, applies=applies)
def apply(model: nn.Module, cfg: ContiguousWeightsConfig, ctx: Context) -> nn.Module:
    fixed = []
    with torch.no_grad():
        for module_name, m in model.named_modules():
            for name, p in list(m.named_parameters(recurse=False)):
                if not p.is_contiguous():
                    setattr(m, name, nn.Parameter(p.contiguous(), requires_grad=p.requires_grad))
                    fixed.append(f"{module_name}.{name}".lstrip("."))
            for name, b in list(m.named_buffers(recurse=False)) if cfg.buffers else []:
                if b is not None and not b.is_contiguous():
                    setattr(m, name, b.contiguous())
                    fixed.append(f"{module_name}.{name}".lstrip("."))
    ctx.notes.append(f"made {len(fixed)} tensor(s) contiguous" + (f": {', '.join(fixed)}" if fixed else ""))
    ctx.details["contiguous_weights"] = {"fixed": fixed}
    return model
