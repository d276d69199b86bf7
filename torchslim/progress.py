"""The one progress bar factory: tqdm on stderr, resized with the terminal, gone when done."""
from __future__ import annotations

import sys


def bar(total: int, desc: str | None = None, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar of `total` steps (a silent one when not `enabled`); use it as a context manager
    or call `.close()`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=False)
