"""SIGTERM in the driver: one KeyboardInterrupt whose cleanup survives a second SIGTERM, and
the stop hook (the MLflow KILLED mark) runs at once, even while the main thread is held in C."""

import signal
import subprocess
import sys

from conftest import REPO

TWICE = """
import os, signal, time
from vqct.launch.signals import interrupt_on_sigterm
interrupt_on_sigterm()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    print("not interrupted")
except KeyboardInterrupt:
    os.kill(os.getpid(), signal.SIGTERM)  # scancel and the job script both signal the driver
    time.sleep(0.5)
    print("cleanup finished")
"""

# The main thread cannot take the signal for 3 s (the driver inside Ray's blocking get checks
# for it once a second), then the process ends without any Python cleanup (as the driver
# does when its node's raylet exits).
HELD = """
import os, signal, time
from vqct.launch.signals import interrupt_on_sigterm, on_stop_signal
interrupt_on_sigterm()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # in the main thread only
with on_stop_signal(lambda: print("marked KILLED", flush=True)):
    print("ready", flush=True)
    try:
        time.sleep(3)
    except KeyboardInterrupt:  # raised only now, once the main thread is back in Python
        print("main thread back", flush=True)
        os._exit(0)
"""


def test_a_second_sigterm_does_not_cut_the_cleanup_short():
    proc = subprocess.run([sys.executable, "-c", TWICE], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (proc.returncode, proc.stdout.strip()) == (0, "cleanup finished"), proc.stderr[-2000:]


def test_the_stop_hook_runs_while_the_main_thread_is_held():
    proc = subprocess.Popen([sys.executable, "-c", HELD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert out.splitlines() == ["marked KILLED", "main thread back"], err[-2000:]
