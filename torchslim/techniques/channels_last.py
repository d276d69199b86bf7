"""Channels-last (NHWC) memory format: oneDNN and cuDNN convolutions run faster on it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .base import Context, TechniqueConfig, Wrapper, has_module, register


@dataclass(frozen=True)
class ChannelsLastConfig(TechniqueConfig):
    name = "channels_last"


class ChannelsLastInputs(Wrapper):
    """Converts 4-D floating inputs to channels-last, so callers pass ordinary NCHW tensors."""

    def forward(self, *args, **kwargs):
        def conv(t):
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point():
                return t.contiguous(memory_format=torch.channels_last)
            return t

        return self.inner(*[conv(a) for a in args], **{k: conv(v) for k, v in kwargs.items()})


def _applies(model, cfg, ctx):
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model's memory format cannot be changed from outside"
    if not has_module(model, nn.Conv2d):
        return "no Conv2d layers (channels-last helps 2-D convolutions only)"
    if not any(t.dim() == 4 for t in ctx.example.tensors()):
        return "no 4-D input"
    return None


@register(ChannelsLastConfig, applies=_applies)
def apply_channels_last(model, cfg: ChannelsLastConfig, ctx: Context):
    return ChannelsLastInputs(model.to(memory_format=torch.channels_last))
