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

# The main thread sits in a blocking read of stdin (as the driver sits in Ray's blocking get),
# where it cannot take the signal; the process prints "ready" only once a helper thread has
# seen it there (/proc: the main thread's current system call reads fd 0). The test then
# signals, waits for the hook's line, and only then lets the main thread go on by writing to
# its stdin: every step waits for a state, none for a time.
HELD = """
import os, signal, sys, threading
from vqct.launch.signals import interrupt_on_sigterm, on_stop_signal
interrupt_on_sigterm()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # in the main thread only
main = threading.get_native_id()
COUNT = 4093  # an unusual read size, to recognise this read among the thread's system calls

def announce_when_blocked():
    while True:
        fields = open(f"/proc/self/task/{main}/syscall").read().split()
        if len(fields) > 3 and fields[1] == "0x0" and fields[3] == hex(COUNT):
            print("ready", flush=True)
            return
        threading.Event().wait(0.01)

with on_stop_signal(lambda: print("marked KILLED", flush=True)):
    try:
        threading.Thread(target=announce_when_blocked, daemon=True).start()
        os.read(0, COUNT)
        print("not interrupted", flush=True)
    except KeyboardInterrupt:  # raised only now, once the main thread is back in Python
        print("main thread back", flush=True)
        os._exit(0)
"""


def test_a_second_sigterm_does_not_cut_the_cleanup_short():
    proc = subprocess.run([sys.executable, "-c", TWICE], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (proc.returncode, proc.stdout.strip()) == (0, "cleanup finished"), proc.stderr[-2000:]


def test_the_stop_hook_runs_while_the_main_thread_is_held():
    proc = subprocess.Popen([sys.executable, "-c", HELD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "marked KILLED"  # while the main thread is still held
        proc.stdin.write("go")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert out.splitlines() == ["main thread back"], err[-2000:]
