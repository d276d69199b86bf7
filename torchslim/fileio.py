"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def staging_folder(out: str) -> str:
    """An empty hidden folder beside `out`, to write a whole folder into before `replace_folder`."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(os.path.abspath(out)) + ".")


def replace_folder(staged: str, out: str) -> None:
    """Put the folder `staged` in place as `out` (two renames when `out` exists: a reader never sees
    a half-written folder, and no file of the old one lingers in the new one)."""
    os.chmod(staged, 0o755)
    if os.path.exists(out):
        old = staged + ".old"
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)


def cache_dir() -> str:
    """torchslim's cache root: $TORCHSLIM_CACHE, else ~/.cache/torchslim (converted GGUFs, trained
    examples, the search cache)."""
    return os.environ.get("TORCHSLIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "torchslim")


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def write_json(path: str, obj: Any) -> None:
    """JSON with NaN/Infinity written as null (strict JSON readers reject them)."""
    write_text(path, json.dumps(_finite(json.loads(json.dumps(obj, default=_jsonable))), indent=2, allow_nan=False) + "\n")


def _finite(o: Any):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, list):
        return [_finite(v) for v in o]
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    return o


def _jsonable(o: Any):
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)
