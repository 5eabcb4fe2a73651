"""While a run trains on a Ray cluster, watch that the cluster still has the CPUs (and GPUs)
its workers need.

Why: when a node is lost, Ray Train restarts the worker group from the last checkpoint, and
if the node never comes back it retries starting the group without end ("Attempting to start
training worker group", no exit in 420 s on landed main). A user needs an answer instead: after
trainer.node_wait_s seconds short of resources the run stops through the same path as SIGTERM
(workers stopped, MLflow run closed, the resume line printed) and the command fails saying why.
A node that comes back within the wait lets Ray Train resume on its own, as before.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


class ClusterWatch:
    def __init__(self, cpus: float, gpus: float, wait_s: float, poll_s: float = 2.0):
        self.need = {"CPU": cpus, "GPU": gpus}
        self.wait_s, self.poll_s = wait_s, poll_s
        self.lost: str | None = None  # why the run was stopped, once it was
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="vqct-cluster-watch")

    def __enter__(self) -> "ClusterWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _shortfall(self) -> str | None:
        """'1 of the 2 CPUs' when the cluster's alive nodes hold less than the workers need."""
        import ray

        have = ray.cluster_resources()  # totals over the nodes alive now
        short = [f"{have.get(k, 0):g} of the {v:g} {k}s" for k, v in self.need.items() if v and have.get(k, 0) < v]
        return ", ".join(short) or None

    def _watch(self) -> None:
        short_since = None
        while not self._done.wait(self.poll_s):
            try:
                short = self._shortfall()
            except Exception:  # the head itself is gone: the driver's own error path reports it
                return
            if short is None:
                if short_since is not None:
                    print("cluster: the workers' resources are back; Ray Train restarts them from the last checkpoint",
                          file=sys.stderr)
                short_since = None
                continue
            if short_since is None:
                short_since = time.monotonic()
                print(f"cluster: the cluster has {short} the workers need (a node was lost?); waiting up to "
                      f"{self.wait_s:g} s for it to come back (trainer.node_wait_s)", file=sys.stderr)
            elif time.monotonic() - short_since >= self.wait_s:
                self.lost = (f"a node was lost and did not come back: the cluster had {short} the workers need "
                             f"for {self.wait_s:g} s (trainer.node_wait_s)")
                os.kill(os.getpid(), signal.SIGTERM)  # the driver's clean stop (launch/signals.py)
                return
