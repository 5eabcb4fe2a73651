"""Rank 0's metric logger: batched MLflow writes that never raise into the training loop.

When the tracking server fails, metrics stay in a bounded buffer and are sent with the
next successful write; a warning is printed once per outage.

A restarted attempt (worker lost, run resumed) repeats the steps after its checkpoint;
steps the run already logged are not logged again, so every step has one value.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path


class MetricLogger:
    def __init__(self, uri: str, run_id: str, max_buffer: int = 100_000):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id
        self.buffer: deque = deque(maxlen=max_buffer)
        self.failing = False
        self.logged_through = self._last_logged_step()

    def _last_logged_step(self, key: str = "perf/step_time_s") -> int:
        """The last step an earlier attempt of this run logged (-1: none, or unknown)."""
        try:
            return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)
        except Exception:
            return -1  # tracking down: its steps may then repeat, but training goes on

    def log(self, metrics: dict[str, float], step: int, force: bool = False) -> None:
        from mlflow.entities import Metric

        if step <= self.logged_through and not force:
            return
        now = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        self.flush()

    def flush(self) -> None:
        try:
            while self.buffer:
                chunk = [self.buffer[i] for i in range(min(1000, len(self.buffer)))]
                self.client.log_batch(self.run_id, metrics=chunk)
                for _ in chunk:
                    self.buffer.popleft()
            if self.failing:
                print("tracking: MLflow reachable again, buffered metrics sent", file=sys.stderr)
            self.failing = False
        except Exception as exc:
            if not self.failing:
                print(f"warning: MLflow logging failed ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"training goes on, {len(self.buffer)} metric values buffered", file=sys.stderr)
            self.failing = True

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        try:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as exc:
            print(f"warning: could not log artifact {path.name}: {exc}", file=sys.stderr)
