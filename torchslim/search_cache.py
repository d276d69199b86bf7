"""Remember searches: the same command on the same model, data, machine and versions reuses the
measured rows (`torchslim optimize` caches by default; --fresh searches anew)."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os

import torch
import torch.nn as nn

from . import device as dev
from .fileio import cache_dir, write_json

VERSION = 1  # bump when what a row means changes
_NOT_IN_KEY = ("out", "save_model", "keep_float", "debug", "cache", "fresh")


def folder() -> str:
    """$TORCHSLIM_SEARCH_CACHE, else $TORCHSLIM_CACHE/search/ (default ~/.cache/torchslim/search)."""
    if os.environ.get("TORCHSLIM_SEARCH_CACHE"):
        return os.environ["TORCHSLIM_SEARCH_CACHE"]
    return os.path.join(cache_dir(), "search")


def _tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{tuple(t.shape)}:{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _model(h, model: nn.Module) -> None:
    h.update(" ".join(type(m).__qualname__ for m in model.modules()).encode())
    for name, t in list(model.state_dict(keep_vars=False).items()):
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            _tensor(h, t)


def _function(fn) -> str:
    if fn is None:
        return "none"
    target = fn if hasattr(fn, "__code__") else type(fn)
    code = getattr(getattr(target, "__code__", None), "co_code", b"")
    call = getattr(getattr(target, "__call__", None), "__code__", None)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}:" + hashlib.sha256(
        code + (call.co_code if call is not None else b"")).hexdigest()[:16]


def _code() -> str:
    """A hash of torchslim's own source and data files: a changed technique, check or prior must not
    replay rows measured by the code before it."""
    h = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith((".py", ".json", ".j2"))):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def key(workload, config, device: torch.device) -> str:
    """The cache key of searching `workload` under `config` on `device` (hex SHA-256) over everything
    that can change a row: the weights (every parameter and buffer, bytes), the model's module
    types, the example inputs (shapes, dtypes, values), the calibration batches (values), the task
    metric (its function's module, name and code; not data it reads from elsewhere), the workload's
    name/spec/source, the OptimizeConfig (less where the results are written), the recipe list in
    search order (priors.json), torchslim's own source (a hash), torch/torchao/transformers versions, the device, the CPU flags and the thread count."""
    from .recipes import by_name, candidates, ordered

    h = hashlib.sha256(f"torchslim-search-v{VERSION}".encode())
    _model(h, workload.model)
    for t in workload.example.tensors():
        _tensor(h, t)
    h.update(workload.example.describe().encode())
    if workload.calibration is not None:
        from .inputs import as_example

        for batch in workload.calibration():
            for t in as_example(batch).tensors():
                _tensor(h, t)
    # in the order the search tries them (priors.json): with a time budget the order decides which are tried
    recipes = by_name(list(config.recipes), device) if config.recipes else ordered(candidates(device), workload.model, device)
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_KEY}
    facts = {
        "workload": [workload.name, workload.spec, workload.metric, repr(sorted(workload.source.items(), key=str))],
        "evaluate": _function(workload.evaluate), "config": cfg, "recipes": [r.to_list() for r in recipes],
        "versions": {p: _version(p) for p in ("torch", "torchao", "transformers", "torchslim")}, "code": _code(),
        "device": str(device), "cpu_flags": sorted(dev.cpu_flags()), "threads": torch.get_num_threads(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }
    h.update(json.dumps(facts, sort_keys=True, default=str).encode())
    return h.hexdigest()


def path(k: str) -> str:
    return os.path.join(folder(), f"{k}.json")


def load(k: str) -> dict | None:
    """The stored run for key `k`, or None (missing, unreadable, or from a run that stopped early)."""
    try:
        with open(path(k), encoding="utf-8") as f:
            run = json.load(f)
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and run.get("recipes") and not run.get("error") else None


def store(k: str, run) -> None:
    """Keep a completed run (never one that stopped early)."""
    if run.error:
        return
    try:
        write_json(path(k), run.to_dict())
    except OSError:
        pass  # a read-only cache is not worth failing a search for
