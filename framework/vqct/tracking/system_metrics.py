"""MLflow's own system metrics (CPU, memory, disk, network; GPU when nvidia-ml-py sees one)
for a training run, from the rank-0 worker's node.

MLflow's monitor publishes a sample only after a full interval and drops the one in progress
when it stops, so a run shorter than one interval would log none; `stop` publishes that last
sample, so every run ends with at least one.
"""

from __future__ import annotations

import sys


class SystemMetrics:
    def __init__(self, uri: str, run_id: str, interval_s: float, resumed: bool):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=resumed,
                                            tracking_uri=uri)
        self.monitor.start()

    def stop(self) -> None:
        monitor = self.monitor
        try:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # tracking never fails a training run
            print(f"warning: could not log the last system metrics: {type(exc).__name__}: {exc}", file=sys.stderr)


def start_system_metrics(uri: str, run_id: str, interval_s: float, resumed: bool) -> SystemMetrics | None:
    try:
        return SystemMetrics(uri, run_id, interval_s, resumed)
    except Exception as exc:
        print(f"warning: no system metrics for this run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
