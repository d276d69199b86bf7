"""torch.ao's eager dynamic INT8 (deprecated upstream, still the fastest eager path for Linear/LSTM/GRU)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import quiet

__all__ = ["dynamic_int8"]


def dynamic_int8(root: nn.Module, layers: dict[str, type], per_channel: bool) -> nn.Module:
    """torch.ao's eager dynamic INT8 on exactly the submodules named in `layers` ({name: nn.Linear /
    nn.LSTM / nn.GRU}), in place; every other module is left alone. Names are relative to `root`
    and not empty (torch.ao swaps children, never `root` itself). Run it under
    common.quantized_engine(...) to pick the kernels."""
    with quiet():
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weights for Linear; the RNN kernels take per-tensor weights only.
        qconfigs = {name: per_channel_dynamic_qconfig if per_channel and t is nn.Linear else default_dynamic_qconfig
                    for name, t in layers.items()}
        return quantize_dynamic(root, qconfigs, dtype=torch.qint8, inplace=True)
