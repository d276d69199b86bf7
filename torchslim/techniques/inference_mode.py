"""torch.inference_mode: no autograd bookkeeping at all (cheaper than no_grad: no version counters)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Context, TechniqueConfig, Wrapper, register


@dataclass(frozen=True)
class InferenceModeConfig(TechniqueConfig):
    name = "inference_mode"


class InferenceMode(Wrapper):
    def forward(self, *args, **kwargs):
        with torch.inference_mode():
            return self.inner(*args, **kwargs)


@register(InferenceModeConfig)
def apply_inference_mode(model, cfg: InferenceModeConfig, ctx: Context):
    return InferenceMode(model)
