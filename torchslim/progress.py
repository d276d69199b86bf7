"""What the terminal shows: the one progress bar factory (tqdm on stderr, resized with the terminal,
gone when done), and the one way to silence upstream chatter for a block (`quiet`)."""
from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import sys
import warnings

# torchao's optional-kernel loader and torch.ao's deprecations; torch.export logs a warning for every
# Dim.AUTO dimension it keeps static (batch 1, ...).
UPSTREAM_LOGGERS = ("torchao", "torch.ao")
EXPORT_LOGGERS = ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes")


# Off inside `shown(False)`: a run asked for no progress (--no-progress, optimize(progress=False)) shows
# no bar at all, also the ones deep in a technique (calibration) that never see the flag.
_shown: contextvars.ContextVar[bool] = contextvars.ContextVar("torchslim_progress_shown", default=True)
# Upstream deprecation chatter a command-line user cannot act on (torch's pytree about torchao's enums,
# torch.export's LeafSpec FutureWarning): silenced for the CLI unless --debug (`calm_upstream`).
NOISY_LOGGERS = ("torch.utils._pytree",) + UPSTREAM_LOGGERS
NOISY_WARNINGS = (r".*LeafSpec.*", r".*register_constant.*")


@contextlib.contextmanager
def shown(enabled: bool):
    """Every bar made inside the block is silent when not `enabled`."""
    token = _shown.set(enabled and _shown.get())
    try:
        yield
    finally:
        _shown.reset(token)


def calm_upstream() -> None:
    """For the command line's process: upstream loggers that only announce deprecations and optional
    kernels they could not load (torchao's CUDA libraries on a CPU host) below ERROR, and the
    deprecation warnings about upstream's own internals ignored. A filter, not a level: torch's
    logging resets its loggers' levels when Dynamo first runs. Not for the library: a user's process
    keeps its logging as it set it."""
    for name in NOISY_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(f, _ErrorsOnly) for f in lg.filters):
            lg.addFilter(_ErrorsOnly())
    for msg in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=msg)


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def hide_upstream_bars() -> None:
    """Hugging Face's own progress bars (loading and writing weights) off for this process, also
    where transformers was imported before (its switch is read at import)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def bar(total: int, desc: str | None = None, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar of `total` steps (a silent one when not `enabled` or inside `shown(False)`); use it
    as a context manager or call `.close()`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not (enabled and _shown.get()), file=sys.stderr,
                dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def quiet(export: bool = False, output: bool = False):
    """Upstream calls silenced for the block only: warnings, and torchao's and torch.ao's loggers below
    ERROR; `export`: torch.export's loggers too; `output`: every log record below ERROR and whatever is
    printed on stdout/stderr (the exporters, ORT's quantizers and NNCF print progress). A failure
    still raises with its message; everything is restored after the block."""
    loggers = [logging.getLogger(n) for n in UPSTREAM_LOGGERS + (EXPORT_LOGGERS if export else ())]
    levels = [lg.level for lg in loggers]
    disabled = logging.root.manager.disable
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    if output:
        logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            if output:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            yield
    finally:
        logging.disable(disabled)
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
