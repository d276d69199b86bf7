"""The quantization layer: every call into torchao / torch.ao lives in this package, one module per
upstream flow (pt2e, qat, fx, ao, legacy), so techniques and tools use public names only."""
from . import ao, bias_correction, common, fx, legacy, probes, pt2e, qat
from .common import OBSERVERS, needs_reduce_range, quantized_engine, quiet

__all__ = ["ao", "bias_correction", "common", "fx", "legacy", "probes", "pt2e", "qat", "OBSERVERS", "needs_reduce_range",
           "quantized_engine", "quiet"]
