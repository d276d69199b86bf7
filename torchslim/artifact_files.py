"""The files of a saved model folder: what each is for, its size and SHA-256 (recorded in torchslim.json
at save, checked before anything is read at load), and calibration batches stored compactly."""
from __future__ import annotations

import hashlib
import os

import torch

from .errors import SlimError

MANIFEST = "torchslim.json"

# Lossless compaction of calibration tensors: a float tensor with few distinct values (images decoded
# from 8-bit pixels and normalized: 256 per channel) is stored as its sorted distinct values plus an
# 8- or 16-bit index per element; integer ids that fit are stored as int32. Unpacked, every element is
# bit-identical, so re-calibrating on load gives the same ranges and the reload check still holds.
_PALETTE_8, _PALETTE_16 = 256, 32768


def pack(t):
    """`t` (a tensor, or a list/tuple/dict of them) in its compact lossless form."""
    if isinstance(t, (list, tuple)):
        return type(t)(pack(v) for v in t)
    if isinstance(t, dict):
        return {k: pack(v) for k, v in t.items()}
    if not isinstance(t, torch.Tensor) or t.numel() < 1024:
        return t.clone() if isinstance(t, torch.Tensor) else t  # clone: a view saves its whole base storage
    if t.is_floating_point() and bool(torch.isfinite(t).all()):
        values, index = torch.unique(t, return_inverse=True)
        if values.numel() <= _PALETTE_16 and not bool((values == 0).any() and torch.signbit(t[t == 0]).any()):
            idx = index.to(torch.uint8 if values.numel() <= _PALETTE_8 else torch.int16)
            return {"__packed__": "palette", "values": values.clone(), "index": idx}
    if t.dtype == torch.int64 and t.numel() and -2**31 <= int(t.min()) and int(t.max()) < 2**31:
        return {"__packed__": "int32", "values": t.to(torch.int32)}
    return t.clone()


def unpack(t):
    """The inverse of `pack` (plain tensors and containers pass through: folders saved before packing)."""
    if isinstance(t, dict) and t.get("__packed__") == "palette":
        return t["values"][t["index"].long()]
    if isinstance(t, dict) and t.get("__packed__") == "int32":
        return t["values"].to(torch.int64)
    if isinstance(t, (list, tuple)):
        return type(t)(unpack(v) for v in t)
    if isinstance(t, dict):
        return {k: unpack(v) for k, v in t.items()}
    return t


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def roles(engine: dict | None, torchscript: str | None) -> dict[str, str]:
    """What each file a save may write is for."""
    out = {
        "weights.pt": "FP32 weights: the recipe is re-applied to them on load",
        "calibration.pt": "calibration inputs (compact, lossless): the recipe re-calibrates on them on load",
        "example.pt": "example inputs: the reload check runs them",
        "reference.pt": "the validated outputs on the example: the reload check compares to them",
    }
    if torchscript:
        out[torchscript] = "serving without torchslim: torch.jit.load"
    if engine:
        out[engine["meta"]] = "engine settings: how torchslim wraps the engine file"
        for i, name in enumerate(engine["files"]):
            out[name] = f"serving: the {engine['engine']} model" if i == 0 else f"serving: {engine['engine']} data"
    return out


def describe(folder: str, engine: dict | None, torchscript: str | None) -> dict[str, dict]:
    """{file: {bytes, sha256, role}} for every file in `folder` but the manifest."""
    known = roles(engine, torchscript)
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name == MANIFEST or not os.path.isfile(path) or name.startswith("."):
            continue
        out[name] = {"bytes": os.path.getsize(path), "sha256": sha256(path), "role": known.get(name, "other")}
    return out


def verify(folder: str, manifest: dict) -> None:
    """Refuse a folder whose files differ from what was saved (truncated, edited, replaced), before
    any of them is read: a changed file is never deserialized or executed. Folders saved before
    the manifest listed its files are not checked."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        return
    for name, entry in files.items():
        path = os.path.join(folder, name)
        if os.path.basename(name) != name or not isinstance(entry, dict):
            raise SlimError(f"'{folder}/{MANIFEST}' lists an invalid file entry {name!r}",
                            "the manifest was edited; save the model again with torchslim optimize")
        if not os.path.isfile(path):
            raise SlimError(f"'{path}' is missing from the saved model folder",
                            "copy the whole folder, or save the model again with torchslim optimize")
        size = os.path.getsize(path)
        if size != entry.get("bytes") or sha256(path) != entry.get("sha256"):
            what = f"{size} bytes, saved as {entry.get('bytes')}" if size != entry.get("bytes") else "its SHA-256 differs"
            raise SlimError(f"'{path}' was changed after it was saved ({what}); it is not loaded",
                            "copy the folder again from where torchslim wrote it, or save the model again")


def table(files: dict[str, dict]) -> list[str]:
    """Lines 'name  size  role' for printing."""
    width = max((len(n) for n in files), default=0)
    return [f"  {n:<{width}}  {_size(e['bytes']):>9}  {e['role']}" for n, e in files.items()]


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
