"""Training checkpoints that survive a kill: everything a run needs to continue exactly where it
stopped, written atomically (a temporary file renamed over the old one, so a crash mid-write
leaves the previous checkpoint intact).

A checkpoint holds the model (for QAT also the fake-quantize observers' ranges and on/off flags,
which are buffers of the model), the optimizer, the LR scheduler, the gradient scaler, every
process's RNG states, the epoch, the step and the loss history, plus the settings the run was
started with. Resuming with other settings or another model is refused with a clear message
instead of silently training a different run. Files are read with torch.load(weights_only=True):
tensors and plain containers only, no code.
"""
from __future__ import annotations

import os
import random

import torch
import torch.nn as nn

from ..errors import SlimError, first_line
from ..fileio import atomic_write

FORMAT = "torchslim.training.checkpoint/1"
FILENAME = "checkpoint.pt"


def rng_state() -> dict:
    """This process's random number generator states (torch CPU and CUDA, Python's `random`)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(path: str, *, model: nn.Module, optimizer, scheduler, scaler, progress: dict, settings: dict,
         rng: list[dict]) -> None:
    """Write the checkpoint atomically. `progress`: epoch, step, step_in_epoch, history, ...;
    `settings`: what must match to resume; `rng`: one rng_state() per process, in rank order."""
    state = {
        "format": FORMAT,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "progress": progress,
        "settings": settings,
        "rng": rng,
    }
    atomic_write(path, lambda f: torch.save(state, f))


def read(path: str) -> dict:
    """The checkpoint at `path`, checked to be a whole torchslim training checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, garbage, pickled code: all unreadable here
        first = first_line(e)
        raise SlimError(f"checkpoint '{path}' is corrupt or unreadable ({type(e).__name__}: {first[:160]})",
                        "delete it (or pass --restart) to train from the start, or point --out at another folder") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SlimError(f"'{path}' is not a torchslim training checkpoint",
                        "delete it (or pass --restart) to train from the start, or point --out at another folder")
    missing = [k for k in ("model", "optimizer", "progress", "settings", "rng") if k not in state]
    if missing:
        raise SlimError(f"checkpoint '{path}' is incomplete (no {', '.join(missing)})",
                        "delete it (or pass --restart) to train from the start")
    return state


def check_settings(state: dict, settings: dict, path: str) -> None:
    """Refuse to resume a run started with other settings (the result would be neither run)."""
    saved = state["settings"]
    diff = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
    if diff:
        shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {settings.get(k)!r}" for k in diff[:4])
        raise SlimError(f"checkpoint '{path}' was written by a run with other settings ({shown})",
                        "resume with the same settings, pass --restart to train from the start, or use another --out")


def check_model(state_dict: dict, model: nn.Module, path: str) -> None:
    """Refuse a checkpoint whose weights do not fit `model`, naming the first differences."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    params = dict(model.named_parameters())
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(p.shape)}" for k, p in params.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(p.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + ", ".join(shapes[:3]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
        raise SlimError(f"checkpoint '{path}' does not match this model ({'; '.join(parts)})",
                        "resume with the model the checkpoint was trained with, or pass --restart / another --out")


def restore(state: dict, path: str, *, model: nn.Module, optimizer, scheduler, scaler, settings: dict) -> dict:
    """Load a read() checkpoint into the run's objects after checking it fits; returns its progress."""
    check_settings(state, settings, path)
    check_model(state["model"], model, path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = first_line(e)
        raise SlimError(f"checkpoint '{path}' does not fit this run: {first[:200]}",
                        "resume with the same model and settings, or pass --restart / another --out") from e
    return state["progress"]


def exists(folder: str | None) -> bool:
    return bool(folder) and os.path.isfile(os.path.join(folder, FILENAME))


def path_in(folder: str) -> str:
    return os.path.join(folder, FILENAME)
