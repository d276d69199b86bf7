"""Interrupted and concurrent runs on one --out folder: a lock, and the settled rows of an unfinished run."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import json
import os
import sys

import torch

from .errors import SlimError
from .interrupt import held, sigterm_raises

LOCK_NAME = ".torchslim.lock"
REUSABLE = ("failed", "skipped", "rejected")
_IGNORED_OPTIONS = ("out", "debug", "save_model", "keep_float")
_previous: contextvars.ContextVar[dict | None] = contextvars.ContextVar("torchslim_resume", default=None)


@contextlib.contextmanager
def session(config, workload, identity: dict | None = None):
    """Wrap a whole `optimize` run (or a generation run: `identity` then names what of results.json's
    "workload" must match for its rows to be reused, instead of a forward workload's spec, example
    and calibration data).

    - Takes an exclusive lock on OUT/.torchslim.lock (fcntl.flock, released by the kernel even after
      kill -9), so a second run on the same folder stops at once with the first one's process id
      instead of interleaving its writes with it; an --out that is a file or cannot be written is a
      clear error here, before any work.
    - Reads OUT/results.json when an earlier run of the same model, inputs, options, torch version
      and machine stopped before timing (killed, interrupted, out of memory): the rows it had already
      settled as failed, skipped or rejected are reused as they are (`reused(name)`, a note in each),
      and the recipes that had passed are applied again, since a model cannot be timed from a file.
      A finished results.json is never reused: rerunning a finished run measures again.
    - SIGTERM stops the run as Ctrl-C does (interrupt.py): the rows so far are written with the run
      marked interrupted, and the lock file is removed on every way out (finished, error, signal).
    """
    out = config.out
    if not out:
        with sigterm_raises():
            yield
        return
    with sigterm_raises():
        fd = _lock(out)
        try:
            token = _previous.set(_load(out, config, identity if identity is not None else forward_identity(workload)))
            try:
                yield
            finally:
                _previous.reset(token)
        finally:
            _unlock(fd, os.path.join(out, LOCK_NAME))


def forward_identity(workload) -> dict:
    """What of a forward-pass run's results.json "workload" must match: the model, its example, its
    calibration data (None: a model without a spec cannot be reloaded by a rerun, never resumed)."""
    return {"spec": workload.spec, "example": workload.example.describe(), "calib_data": workload.source.get("calib_data")}


def reused(name: str, row_type=None):
    """The row the interrupted run settled for recipe `name` (a `row_type`, by default a
    RecipeResult), or None."""
    prev = _previous.get()
    if not prev or name not in prev["rows"]:
        return None
    from .results import RecipeResult

    row = (row_type or RecipeResult).from_dict(prev["rows"][name])
    row.notes = list(row.notes or []) + [f"reused from the interrupted run of {prev['created']} ({prev['path']}): not applied again"]
    return row


def _lock(out: str) -> int:
    import fcntl

    if os.path.exists(out) and not os.path.isdir(out):
        raise SlimError(f"--out '{out}' is an existing file, not a folder", "give a folder path (it is created if missing)")
    path = os.path.join(out, LOCK_NAME)
    while True:
        try:
            os.makedirs(out, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise SlimError(f"cannot write to --out '{out}': {e.strerror}", "give a folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise SlimError(f"another torchslim run is writing to --out '{out}' (process {holder})",
                            "wait for it to finish, or give this run another --out") from None
        if _same_file(fd, path):
            break
        # The holder we waited on removed the file as it let go: this lock is on a file no longer
        # at `path`, and a third run could lock the new one. Lock what `path` names now.
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}, started {_now()}\n".encode(), 0)
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unlock(fd: int, path: str) -> None:
    """Remove the lock file, then let go: only the holder removes it, while it still holds the lock
    (a run that opened the file meanwhile sees it gone and locks a new one: _lock's check)."""
    import fcntl

    with held():
        try:
            if _same_file(fd, path):
                os.unlink(path)
        except OSError:
            pass  # a folder removed under us: nothing left to clean
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _options(config) -> dict:
    d = json.loads(json.dumps(dataclasses.asdict(config), default=list))
    return {k: v for k, v in d.items() if k not in _IGNORED_OPTIONS}


def _load(out: str, config, identity: dict) -> dict | None:
    """The reusable rows of an unfinished earlier run of the same job in `out`, or None."""
    path = os.path.join(out, "results.json")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        recipes, w = d["recipes"], d["workload"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not recipes or (recipes[0].get("timing") or {}).get("median_ms") is not None:
        return None  # empty, or it reached the timing phase: a finished run is measured again
    same = (identity.get("spec") is not None and all(w.get(k) == v for k, v in identity.items())
            and {k: v for k, v in (d.get("config") or {}).items() if k not in _IGNORED_OPTIONS} == _options(config)
            and (d.get("machine") or {}).get("torch") == torch.__version__
            and (d.get("machine") or {}).get("cpu_count") == os.cpu_count())
    if not same:
        return None
    rows = {r["name"]: r for r in recipes[1:] if r.get("status") in REUSABLE and r.get("name")}
    if not rows:
        return None
    print(f"torchslim: resuming the unfinished run of {d.get('created', '?')} in {out}: reusing {len(rows)} row(s) it had "
          f"settled ({', '.join(rows)}); recipes that had passed are applied again to be timed", file=sys.stderr)
    return {"rows": rows, "created": d.get("created", "?"), "path": path}
