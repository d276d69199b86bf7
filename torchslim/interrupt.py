"""SIGTERM (a container stopping) handled like Ctrl-C: one exception, so a stopped run writes what it
measured, releases its lock and exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOPPING = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal as an exception; a KeyboardInterrupt, so `except Exception` never swallows it."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_name(e: BaseException) -> str:
    """'SIGTERM' for Interrupted(SIGTERM), 'SIGINT' for a plain KeyboardInterrupt (Ctrl-C)."""
    return signal.Signals(getattr(e, "signum", signal.SIGINT)).name


def exit_code(e: BaseException) -> int:
    """The shell's convention for a process stopped by a signal: 128 + its number."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises Interrupted in the main thread (instead of killing the
    process with nothing written). Only where SIGTERM has its default action (a user's own handler is
    left alone) and only in the main thread (the only one Python delivers signals to)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the block runs (a stopped run's last write, a lock's removal): a
    second Ctrl-C cannot cut it short; a signal that came meanwhile is delivered after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
