"""Calibration data for static quantization: from a file or a factory, cut to the example's batch size."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import torch

from .errors import SlimError
from .inputs import Example, as_example

DEFAULT_SAMPLES = 256


def from_spec(spec: str, example: Example, samples: int = DEFAULT_SAMPLES) -> Callable[[], list[Example]]:
    """`--calib-data`: a .pt file of inputs ([N, ...] tensor, tuple/list of such, or dict of such),
    or file.py:fn / package.module:fn returning an iterable of batches. Returns a calibration function."""
    if os.path.isfile(spec) and not spec.endswith(".py"):
        from .loading import read_safely

        data = read_safely(spec, "calibration data", "save the inputs with torch.save(tensor_or_tuple_or_dict, path)")
        batches = split(as_example(data), example.batch_size)
    elif ":" in spec:
        from .loading import _load_factory_fn

        made = _load_factory_fn(spec)()
        batches = [as_example(b) for b in (made if isinstance(made, Iterable) else [made])]
    else:
        raise SlimError(f"calibration data '{spec}' does not exist", "give a .pt file of inputs, or file.py:fn returning batches")
    return _checked(batches, example, samples, f"calibration data '{spec}'")


def from_batches(batches, example: Example, samples: float = DEFAULT_SAMPLES,
                 what: str = "the calibration data") -> Callable[[], list[Example]]:
    """The Python API's calibration: an iterable of batches (tensors, tuples, dicts or Examples),
    or a function returning one, checked against `example` and capped at `samples`."""
    made = batches() if callable(batches) else batches
    if not isinstance(made, Iterable):
        raise SlimError(f"calibration data of type {type(made).__name__} is not iterable",
                        "give a DataLoader or list of input batches shaped like the example")
    return _checked((as_example(b) for b in made), example, samples, what)


def _checked(batches: Iterable[Example], example: Example, samples: float, what: str) -> Callable[[], list[Example]]:
    """The first `samples` samples of `batches`, each checked against `example`; none is an error."""
    batches = cap(batches, samples)
    for b in batches:
        check_batch(b, example)
    if not batches:
        raise SlimError(f"{what} is empty", "give at least one batch of real inputs")
    return lambda: batches


def split(data: Example, batch: int) -> list[Example]:
    """Cut an Example holding N samples along dimension 0 into Examples of `batch` samples (the rest dropped)."""
    tensors = data.tensors()
    if not tensors:
        return []
    n = int(tensors[0].shape[0])
    return [data.map(lambda t, i=i: t[i:i + batch]) for i in range(0, n - batch + 1, batch)]


def cap(batches: Iterable[Example], samples: int) -> list[Example]:
    out, seen = [], 0
    for b in batches:
        if seen >= samples:
            break
        out.append(b)
        seen += b.batch_size
    return out


def check_batch(batch: Example, example: Example) -> None:
    """Refuse a calibration batch whose inputs differ in count, dtype or shape from the example's."""
    got, want = batch.tensors(), example.tensors()
    if len(got) != len(want):
        raise SlimError(f"a calibration batch has {len(got)} input tensor(s), the model takes {len(want)}",
                        f"give batches shaped like the example inputs: {example.describe()}")
    for i, (g, w) in enumerate(zip(got, want)):
        if g.dtype != w.dtype or g.shape != w.shape:
            raise SlimError(f"calibration input {i} is {tuple(g.shape)}:{_name(g.dtype)}, the example is {tuple(w.shape)}:{_name(w.dtype)}",
                            "give calibration batches of the same shape and dtype as the example inputs")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
