"""Training-time efficiency: mixed precision (amp), a reference training loop (loop), checkpoints
that survive a kill (checkpoint), data-parallel runs under torchrun (distributed), and
quantization-aware training that ends on the PTQ INT8 kernels (qat).

    from torchslim.training import TrainConfig, fit, load_dataset
    train, test = load_dataset("fashion-mnist")
    result = fit(model, train, TrainConfig(epochs=2, precision="auto"), test_set=test, out="run/")
"""
from __future__ import annotations

from .amp import Amp, choose as choose_precision, compare as compare_precisions
from .data import load as load_dataset
from .loop import Hooks, TrainConfig, TrainResult, accuracy, fit
from .qat import QatConfig, QatResult, fit_qat

__all__ = ["Amp", "choose_precision", "compare_precisions", "load_dataset", "Hooks", "TrainConfig", "TrainResult",
           "accuracy", "fit", "QatConfig", "QatResult", "fit_qat"]
