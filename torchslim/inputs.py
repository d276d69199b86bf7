"""Example inputs: what a model is called with, and how to make them from a shape spec."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import SlimError

DTYPES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "bool": torch.bool,
}


@dataclass
class Example:
    """One call's worth of inputs: `model(*args, **kwargs)`."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __call__(self, model: Callable) -> Any:
        return model(*self.args, **self.kwargs)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Example":
        """Apply `fn` to every tensor in the inputs (nested lists/tuples/dicts included)."""
        return Example(_map(fn, self.args), _map(fn, self.kwargs))

    def to(self, device: torch.device) -> "Example":
        return self.map(lambda t: t.to(device))

    def tensors(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        _map(lambda t: out.append(t) or t, (self.args, self.kwargs))
        return out

    @property
    def batch_size(self) -> int:
        ts = self.tensors()
        return int(ts[0].shape[0]) if ts and ts[0].dim() > 0 else 1

    def for_export(self) -> "Example":
        """These inputs at batch 2 where they have batch 1 (every tensor): torch.export specializes
        dimensions of size 1, so a graph exported at batch 1 would serve batch 1 only."""
        ts = self.tensors()
        if ts and all(t.dim() >= 1 and t.shape[0] == 1 for t in ts):
            return self.map(lambda t: torch.cat([t, t]))
        return self

    def describe(self) -> str:
        parts = [f"{tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}" for t in self.tensors()]
        return ", ".join(parts) or "(no tensors)"


def _map(fn, obj):
    # Not torch.utils._pytree.tree_map: pytree treats unregistered tuple/list/dict subclasses as
    # leaves (their tensors would not be moved) and descends into library-registered types
    # (transformers' caches, ModelOutput); this maps into every tuple/list/dict and nothing else.
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(fn, o) for o in obj)
    if isinstance(obj, list):
        return [_map(fn, o) for o in obj]
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    return obj


def as_example(obj: Any) -> Example:
    """Accept an Example, a tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(obj, Example):
        return obj
    if isinstance(obj, torch.Tensor):
        return Example((obj,))
    if isinstance(obj, (tuple, list)):
        return Example(tuple(obj))
    if isinstance(obj, dict):
        return Example((), dict(obj))
    raise SlimError(f"example inputs of type {type(obj).__name__} are not supported",
                    "give a tensor, a tuple of tensors, or a dict of keyword tensors")


def parse_shapes(spec: str) -> list[tuple[int, ...]]:
    """'8x3x224x224' -> [(8, 3, 224, 224)]; '1x128,1x128' -> two inputs."""
    shapes = []
    for part in re.split(r"[,;\s]+", spec.strip()):
        if not part:
            continue
        if re.fullmatch(r"-?\d+(x-?\d+)*", part) and "-" in part:
            raise SlimError(f"input shape '{part}' has a negative dimension", "every dimension must be at least 1, e.g. 8x3x224x224")
        if not re.fullmatch(r"\d+(x\d+)*", part):
            raise SlimError(f"cannot read input shape '{part}'", "write it like 8x3x224x224 (one per input, comma-separated)")
        dims = tuple(int(d) for d in part.split("x"))
        if any(d == 0 for d in dims):
            raise SlimError(f"input shape '{part}' has a zero dimension", "every dimension must be at least 1")
        shapes.append(dims)
    if not shapes:
        raise SlimError("empty --input-shape", "write it like 8x3x224x224")
    return shapes


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise SlimError(f"unknown dtype '{name}'", f"use one of {', '.join(sorted(DTYPES))}") from None


def random_example(shapes: list[tuple[int, ...]], dtypes: list[torch.dtype], high: int = 1000, seed: int = 0) -> Example:
    """Random inputs of the given shapes: standard normal floats, integers in [0, high)."""
    if len(dtypes) == 1 and len(shapes) > 1:
        dtypes = dtypes * len(shapes)
    if len(dtypes) != len(shapes):
        raise SlimError(f"{len(shapes)} input shapes but {len(dtypes)} dtypes", "give one --dtype, or one per input")
    _check_allocatable(shapes, dtypes)
    gen = torch.Generator().manual_seed(seed)
    args = []
    for shape, dtype in zip(shapes, dtypes):
        if dtype.is_floating_point:
            args.append(torch.randn(shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            args.append(torch.ones(shape, dtype=torch.bool))
        else:
            args.append(torch.randint(0, high, shape, generator=gen, dtype=dtype))
    return Example(tuple(args))


def _check_allocatable(shapes: list[tuple[int, ...]], dtypes: list[torch.dtype]) -> None:
    """Refuse example inputs larger than the memory this machine has free, before allocating them."""
    need = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for s, d in zip(shapes, dtypes))
    free = _available_bytes()
    if free is not None and need > free:
        shown = "; ".join("x".join(map(str, s)) for s in shapes)
        raise SlimError(f"--input-shape {shown} needs {need / 2**30:.1f} GiB for the inputs alone, "
                        f"more than the {free / 2**30:.1f} GiB of memory available", "use a smaller batch or size in --input-shape")


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
