"""SIGTERM (scancel, kill, a scheduler's stop) takes the same clean path as Ctrl-C: the
driver's KeyboardInterrupt handling marks the MLflow run KILLED, shuts Ray and its
workers down, and prints how to resume."""

from __future__ import annotations

import signal
import threading


def _interrupt_once(signum, frame) -> None:
    # Stopping is under way after the first SIGTERM. A second one (scancel signals every
    # process of the job, and the job script forwards its own) must not cut that cleanup
    # short halfway through; SIGKILL is still there for a forced stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Call at start, and again after ray.init, which installs a SIGTERM handler of its
    own (sys.exit from wherever the driver is) that skips that cleanup."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_once)
