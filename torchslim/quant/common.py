"""Helpers every quantization flow shares: quiet upstream calls (progress.quiet), the quantized engine, observer names."""
from __future__ import annotations

import contextlib
import fnmatch

import torch

from .. import device as dev
from ..errors import SlimError
from ..progress import quiet  # noqa: F401 - the one quiet(), used by every flow here

# Activation range observers of the static configs, by our name -> upstream class name (the same
# names in torch.ao.quantization.observer and torchao.quantization.pt2e.observer).
OBSERVER_CLASSES = {"minmax": "MinMaxObserver", "moving_average": "MovingAverageMinMaxObserver",
                    "histogram": "HistogramObserver"}
OBSERVERS = tuple(OBSERVER_CLASSES)


def observer_class(module, observer: str):
    """The class for an observer name of the static configs, from `module` (an observer module)."""
    return getattr(module, OBSERVER_CLASSES[observer])


@contextlib.contextmanager
def quantized_engine(name: str | None):
    """torch.backends.quantized.engine set to `name` for the block (if this build has it)."""
    before = torch.backends.quantized.engine
    if name and name in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def needs_reduce_range() -> bool:
    """7-bit activations on x86 CPUs without VNNI (their u8*s8 multiply-add can saturate)."""
    return dev.seven_bit_int8()


def unavailable(what: str, e: Exception) -> str:
    """One line saying `what` is unavailable because of `e`."""
    return f"{what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def match_names(names: list[str], patterns: tuple[str, ...], what: str = "module") -> list[str]:
    """The `names` the fnmatch `patterns` match, in pattern order; SlimError for a pattern that
    matches none (a typo must not silently quantize the layer it meant to keep in float)."""
    out: list[str] = []
    for p in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise SlimError(f"skip pattern '{p}' matches no {what} of the model",
                            f"{what} names look like: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
        out += [h for h in hits if h not in out]
    return out
