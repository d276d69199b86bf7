"""What every peer method shares: the prepared-model interface, the per-case environment, and the
registry (one small setup file per engine registers its methods here)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from torchslim import measure


@dataclass
class Prepared:
    """A model made ready by one method.

    run(args) takes the case's torch inputs and returns torch outputs (for fidelity);
    bind(args) converts the inputs once and returns the zero-argument call that is timed.
    """

    run: Callable[[tuple], Any]
    bind: Callable[[tuple], Callable[[], Any]]
    size_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    shared_prep_s: float = 0.0  # time of a step shared with other methods (ONNX export, OV conversion)
    precision: str | None = None  # what it turned out to run in, where the method does not fix it


@dataclass
class Env:
    """Per-case settings and caches (an ONNX file or an OpenVINO model serves several methods)."""

    threads: int
    tmp: str
    recipe: dict | None = None  # torchslim's search result: {"chosen", "steps", ...}
    cache: dict = field(default_factory=dict)

    def cached(self, key: str, make: Callable[[], Any]) -> tuple[Any, float]:
        """(value, seconds it took to make) for a step several methods share; a failure is kept
        and raised again for each method that needs it."""
        if key not in self.cache:
            t0 = time.perf_counter()
            try:
                self.cache[key] = (make(), time.perf_counter() - t0, None)
            except Exception as e:  # noqa: BLE001 - re-raised below, for every dependent method
                self.cache[key] = (None, time.perf_counter() - t0, e)
        value, seconds, error = self.cache[key]
        if error is not None:
            raise error
        return value, seconds


@dataclass(frozen=True)
class Method:
    name: str
    engine: str
    precision: str  # fp32 | bf16 | int8-weight-only | int8-dynamic | int8-static | (torchslim: its recipe's)
    prepare: Callable[..., Prepared]  # (bundle, env) -> Prepared
    transformer_only: bool = False


METHODS: list[Method] = []


def method(name: str, engine: str, precision: str, transformer_only: bool = False):
    """Decorator: register `prepare(bundle, env) -> Prepared` as a method."""

    def deco(fn):
        METHODS.append(Method(name, engine, precision, fn, transformer_only))
        return fn

    return deco


def torch_prepared(model: torch.nn.Module, notes: list[str] | None = None, size_of: torch.nn.Module | None = None) -> Prepared:
    """A torch module called under no_grad, as FP32 eager is."""

    def run(args):
        with torch.no_grad():
            return model(*args)

    return Prepared(run=run, bind=lambda args: (lambda: run(args)), size_bytes=size_or_none(size_of or model),
                    notes=notes or [])


def size_or_none(model: torch.nn.Module) -> int | None:
    try:
        return measure.serialized_bytes(model)
    except Exception:  # noqa: BLE001 - some quantized modules do not serialize; size is then unknown
        return None


def file_bytes(*paths: str) -> int:
    """Bytes of the files, plus any external-data files beside an .onnx (same stem)."""
    total = 0
    for p in paths:
        total += os.path.getsize(p)
        data = p + ".data"
        if os.path.exists(data):
            total += os.path.getsize(data)
    return total


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:240]
