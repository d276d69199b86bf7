"""A Workload is what torchslim optimizes: a model, the inputs it is served with, and how to judge it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch.nn as nn

from .inputs import Example

Evaluate = Callable[[nn.Module], dict]  # model -> {"metric name": value, ...}; higher is better


@dataclass
class Workload:
    model: nn.Module
    example: Example
    name: str = "model"
    spec: str | None = None  # how load_model() rebuilds it (None: built in memory)
    evaluate: Evaluate | None = None  # the user's task metric(s)
    metric: str | None = None  # the key of `evaluate`'s dict that --max-drop applies to
    metric_unit: str = ""  # e.g. "points" for accuracy in percent
    source: dict = field(default_factory=dict)  # how it was loaded (shapes, dtypes), for reloading
    # Representative inputs for static quantization: a function returning an iterable of Examples
    # shaped like `example` (same batch size, so compiled models need no recompilation).
    calibration: Callable[[], Iterable[Example]] | None = None

    def __post_init__(self):
        from .hf import HFForward, is_hf_model

        if is_hf_model(self.model):  # a forward pass: no cache, the outputs as a tuple of tensors
            self.model = HFForward(self.model)
        if self.evaluate is not None and self.metric is None:
            raise ValueError("a Workload with `evaluate` must name its primary `metric`")


def eval_mode(model: nn.Module) -> nn.Module:
    """model.eval(), for the modules that support it (torch.export's modules are already in eval)."""
    try:
        return model.eval()
    except NotImplementedError:
        return model
