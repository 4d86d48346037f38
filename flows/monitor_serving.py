"""Monitor the served models: one UTC day of traffic per model version -> MLflow runs and a Prefect artifact.

    tunegate monitor [--config configs/demo.yaml] [--day 2026-12-01]   # by hand (default: today so far)
    tunegate serve                                                     # daily at 00:30 UTC, as a deployment

Reads the traces `tunegate serve-model` wrote (experiment `<experiment>-serving`) with the ratings
users gave; writes requests, feedback rate, downvote rate and latency p50/p95 per model version to
`<experiment>-monitoring` (one run per version and day) and to the flow run's artifacts (tasks/monitor.py).
"""

from __future__ import annotations

import sys
from datetime import date, datetime, timedelta, timezone

from prefect import flow

from tasks.monitor import MonitorWindow, ServingReport, log_monitoring_runs, measure_serving, publish_monitoring
from tunegate.config import TrackingConfig, load_config


@flow(name="monitor-serving")
def monitor_serving(tracking: TrackingConfig = TrackingConfig(), day: date | None = None) -> ServingReport:
    """Requests, feedback and downvote rates and latency per model version for one UTC day (default: yesterday)."""
    # Yesterday by default: the scheduled run reports the last complete day.
    window = MonitorWindow.day(day or datetime.now(timezone.utc).date() - timedelta(days=1))
    report = measure_serving(tracking, window)
    report = log_monitoring_runs(tracking, report)
    publish_monitoring(report)
    return report


if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    print(monitor_serving(load_config(*overrides_from_argv(sys.argv[1:])).tracking))
