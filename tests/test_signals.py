"""SIGTERM becomes one KeyboardInterrupt: the cleanup it starts survives a second SIGTERM."""

import subprocess
import sys

from conftest import REPO

CHILD = """
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


def test_a_second_sigterm_does_not_cut_the_cleanup_short():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (proc.returncode, proc.stdout.strip()) == (0, "cleanup finished"), proc.stderr[-2000:]
