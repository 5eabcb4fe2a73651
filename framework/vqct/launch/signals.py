"""SIGTERM (scancel, kill, a scheduler's stop) takes the same clean path as Ctrl-C: the
driver's KeyboardInterrupt handling marks the MLflow run KILLED, shuts Ray and its
workers down, and prints how to resume.

What must outlive the driver (the run's KILLED mark) is also done at once by a thread, through
Python's signal wakeup fd: the KeyboardInterrupt reaches the main thread only when Ray's
blocking get next checks for signals, and under scancel SLURM signals the node's raylet at
the same moment, whose exit ends every process attached to it, this driver included."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

_hooks: list[Callable[[], None]] = []
_lock = threading.Lock()
_watching = False


def _interrupt_once(signum, frame) -> None:
    # Stopping is under way after the first SIGTERM. A second one (scancel signals every
    # process of the job, and the job script forwards its own) must not cut that cleanup
    # short halfway through; SIGKILL is still there for a forced stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _watch(fd: int) -> None:
    stops = {signal.SIGTERM, signal.SIGINT}
    while True:
        received = os.read(fd, 64)  # one byte per signal, written by the C-level handler
        if any(signum in stops for signum in received):
            with _lock:
                hooks = _hooks[:]
                _hooks.clear()
            for hook in hooks:
                try:
                    hook()
                except Exception:  # best effort: the main thread's own cleanup follows
                    pass


def _start_watching() -> None:
    global _watching
    if _watching:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd,), daemon=True, name="vqct-stop-signals").start()
    _watching = True


def interrupt_on_sigterm() -> None:
    """Call at start, and again after ray.init, which installs a SIGTERM handler of its
    own (sys.exit from wherever the driver is) that skips that cleanup."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_once)
        _start_watching()


@contextlib.contextmanager
def on_stop_signal(hook: Callable[[], None]) -> Iterator[None]:
    """Within the block, HOOK runs once, on a thread, as soon as SIGTERM or SIGINT arrives
    (after interrupt_on_sigterm). Keep it short and idempotent: the main thread's
    KeyboardInterrupt path runs as well, if the process lives long enough."""
    with _lock:
        _hooks.append(hook)
    try:
        yield
    finally:
        with _lock:
            if hook in _hooks:
                _hooks.remove(hook)
