"""torchslim: make a trained PyTorch model smaller and faster, and prove it by measurement.

    import torchslim
    wl = torchslim.load_model("my_model.py:build", input_shape="8x3x224x224")
    run = torchslim.optimize(wl, torchslim.OptimizeConfig(out="out/"))
    model = torchslim.load("out/model")
"""
from __future__ import annotations

from .version import __version__

from .errors import NotApplicable, SlimError
from .inputs import Example
from .workload import Workload
from .loading import load_model
from .recipes import Recipe
from .techniques import (
    ChannelsLastConfig, CompileConfig, DynamicInt8Config, InferenceModeConfig, LowPrecisionConfig, TorchScriptConfig,
)
from .optimize import OptimizeConfig, optimize
from .artifacts import load, save


def apply(model, recipe: Recipe, example, device: str = "cpu", calibration=None):
    """Apply `recipe` to `model` (in place where the technique allows; pass a copy to keep the original).

    `calibration` feeds the static-quantization steps: an iterable of input batches (a DataLoader or
    list yielding tensors, tuples or dicts shaped like `example`), a function returning one, or a
    `--calib-data` spec (a .pt file or file.py:fn)."""
    import torch

    from .calibration import from_batches, from_spec
    from .hf import HFForward, is_hf_model
    from .inputs import as_example
    from .recipes import apply as _apply
    from .techniques import Context

    dev = torch.device(device)
    example = as_example(example).to(dev)
    if isinstance(calibration, str):
        calibration = from_spec(calibration, example)
    elif calibration is not None:
        calibration = from_batches(calibration, example)
    if is_hf_model(model) and any(s.runtime != "torch" for s in recipe.steps):
        model = HFForward(model)  # an engine exports plain tensors: no cache, outputs as a tuple
    return _apply(model, recipe, Context(device=dev, example=example, calibration=calibration))


__all__ = [
    "__version__", "SlimError", "NotApplicable", "Example", "Workload", "load_model", "Recipe", "apply",
    "OptimizeConfig", "optimize", "load", "save",
    "ChannelsLastConfig", "CompileConfig", "DynamicInt8Config", "InferenceModeConfig", "LowPrecisionConfig",
    "TorchScriptConfig",
]
