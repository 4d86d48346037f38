"""Monitor stage: per model version, the served traffic of one window, from the serving experiment's traces.

    python -m tasks.monitor configs/demo.yaml 2026-12-01     # print one UTC day's numbers, write nothing

For each registered model version and arm (champion, or candidate during a canary) that answered requests
in the window:
- requests: traces whose request started in the window (failed ones included, also counted as errors);
- feedback rate: share of those requests with at least one user rating;
- downvote rate: "down" ratings / all ratings (two users rating one request count twice);
- latency p50 / p95 in ms: the trace's duration (request in -> answer out), numpy's linear percentile.

A request belongs to the window it was made in, wherever its ratings land later: a rerun for a past
day picks up late ratings and updates that day's runs. Results go to the experiment
`<tracking.experiment>-monitoring`, one run per model version and day with the same metric names,
so MLflow's compare view puts versions side by side; and to a Prefect markdown artifact.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from tunegate.config import TrackingConfig
from tunegate.registry import monitoring_experiment, serving_experiment
from tunegate.traces import (ARM_TAG, CHAMPION_ARM, MODEL_NAME_TAG, MODEL_VERSION_TAG, RATING, arm_of, human_feedback,
                             served_traces)

WINDOW_TAG = "tunegate.monitor.window"
METRICS = ("requests", "errors", "ratings", "feedback_rate", "downvote_rate", "latency_p50_ms", "latency_p95_ms")


class MonitorWindow(BaseModel):
    """[start, end) in UTC; a whole UTC day is labelled by its date."""

    model_config = ConfigDict(extra="forbid")
    start: datetime
    end: datetime

    @classmethod
    def day(cls, day: date) -> MonitorWindow:
        start = datetime.combine(day, time(), tzinfo=timezone.utc)
        return cls(start=start, end=start + timedelta(days=1))

    @property
    def label(self) -> str:
        if self.end - self.start == timedelta(days=1) and self.start.time() == time():
            return self.start.date().isoformat()
        return f"{self.start:%Y-%m-%dT%H:%M}Z..{self.end:%Y-%m-%dT%H:%M}Z"

    def ms(self) -> tuple[int, int]:
        return int(self.start.timestamp() * 1000), int(self.end.timestamp() * 1000)


class VersionTraffic(BaseModel):
    """One model version's served requests in the window."""

    model_config = ConfigDict(extra="forbid")
    model_name: str
    version: str
    arm: str = CHAMPION_ARM  # which alias answered these requests: champion, or candidate during a canary
    requests: int
    errors: int
    rated_requests: int
    ratings: int
    downvotes: int
    feedback_rate: float
    downvote_rate: float | None  # None: nobody rated, which is not a 0% downvote rate
    latency_p50_ms: float
    latency_p95_ms: float


class ServingReport(BaseModel):
    """Per model version numbers of one window; `runs` names the monitoring runs once they are logged."""

    model_config = ConfigDict(extra="forbid")
    window: MonitorWindow
    versions: list[VersionTraffic]
    runs: dict[str, str] = {}  # run name -> MLflow run id in <experiment>-monitoring


def version_traffic(name: str, version: str, traces: list, arm: str = CHAMPION_ARM) -> VersionTraffic:
    ratings = [[a.feedback.value for a in human_feedback(t, RATING)] for t in traces]
    given = [r for per_trace in ratings for r in per_trace]
    downvotes = given.count("down")
    durations = np.array([t.info.execution_duration for t in traces], dtype=float)
    return VersionTraffic(
        model_name=name, version=version, arm=arm, requests=len(traces),
        errors=sum(t.info.state.value == "ERROR" for t in traces),
        rated_requests=sum(bool(r) for r in ratings), ratings=len(given), downvotes=downvotes,
        feedback_rate=sum(bool(r) for r in ratings) / len(traces),
        downvote_rate=downvotes / len(given) if given else None,
        latency_p50_ms=float(np.percentile(durations, 50)), latency_p95_ms=float(np.percentile(durations, 95)))


def by_version(item: VersionTraffic) -> tuple:
    return item.model_name, int(item.version) if item.version.isdigit() else 1 << 62, item.version, item.arm


@task(retries=3, retry_delay_seconds=[2, 5, 15])
def measure_serving(tracking: TrackingConfig, window: MonitorWindow) -> ServingReport:
    """Requests, feedback and downvote rates and latency per model version and arm, from the window's traces."""
    _, experiment_id = serving_experiment(tracking)
    groups = defaultdict(list)
    for t in served_traces(experiment_id, *window.ms()):
        groups[(t.info.tags.get(MODEL_NAME_TAG, "unknown"), t.info.tags.get(MODEL_VERSION_TAG, "unknown"),
                arm_of(t))].append(t)
    versions = sorted((version_traffic(name, version, ts, arm) for (name, version, arm), ts in groups.items()),
                      key=by_version)
    return ServingReport(window=window, versions=versions)


def run_name(item: VersionTraffic, window: MonitorWindow) -> str:
    arm = "" if item.arm == CHAMPION_ARM else f" {item.arm}"
    return f"{item.model_name} v{item.version}{arm} {window.label}"


@task(retries=3, retry_delay_seconds=[2, 5, 15])
def log_monitoring_runs(tracking: TrackingConfig, report: ServingReport) -> ServingReport:
    """One run per model version and window in <experiment>-monitoring; a rerun updates the same run."""
    from mlflow.entities import Metric, RunTag

    client, experiment_id = monitoring_experiment(tracking)
    start_ms, end_ms = report.window.ms()
    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    runs = {}
    for item in report.versions:
        tags = {WINDOW_TAG: report.window.label, MODEL_NAME_TAG: item.model_name, MODEL_VERSION_TAG: item.version,
                ARM_TAG: item.arm}
        found = client.search_runs([experiment_id], " AND ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()),
                                   max_results=1)
        # The run spans its window (start_time, end_time), so the runs table sorts by day.
        run_id = found[0].info.run_id if found else client.create_run(
            experiment_id, start_time=start_ms, tags=tags, run_name=run_name(item, report.window)).info.run_id
        values = {k: getattr(item, k) for k in METRICS}
        # Same step, newer timestamp: MLflow shows the rerun's value as the run's metric.
        client.log_batch(run_id, metrics=[Metric(k, float(v), now_ms, 0) for k, v in values.items() if v is not None],
                         tags=[RunTag("mlflow.note.content", run_note(item, report.window))])
        client.set_terminated(run_id, end_time=end_ms)
        runs[run_name(item, report.window)] = run_id
    return report.model_copy(update={"runs": runs})


def run_note(item: VersionTraffic, window: MonitorWindow) -> str:
    return (f"Served traffic of {item.model_name} version {item.version} ({item.arm}), {window.label} (UTC), "
            f"read from the traces in the serving experiment: {item.requests} requests, {item.rated_requests} rated, "
            f"{item.downvotes} of {item.ratings} ratings down.")


def report_markdown(report: ServingReport) -> str:
    lines = [f"## Served traffic {report.window.label} (UTC)", ""]
    if not report.versions:
        return "\n".join(lines + ["No requests in this window."])
    # The arm last: the two arms of a canary sit on adjacent rows, read side by side.
    lines += ["| model | version | requests | errors | feedback rate | downvote rate | latency p50 / p95 ms | arm |",
              "|---|---|---|---|---|---|---|---|"]
    for v in report.versions:
        down = "no ratings" if v.downvote_rate is None else f"{v.downvote_rate:.1%} ({v.downvotes}/{v.ratings})"
        lines.append(f"| {v.model_name} | {v.version} | {v.requests} | {v.errors} | "
                     f"{v.feedback_rate:.1%} ({v.rated_requests}/{v.requests}) | {down} | "
                     f"{v.latency_p50_ms:.1f} / {v.latency_p95_ms:.1f} | {v.arm} |")
    return "\n".join(lines)


@task
def publish_monitoring(report: ServingReport) -> str:
    """The window's table as a Prefect markdown artifact (shown on the flow run)."""
    markdown = report_markdown(report)
    create_markdown_artifact(markdown=markdown, key="serving-monitor", description="Served traffic per model version")
    return markdown


if __name__ == "__main__":
    from tunegate.config import load_config

    print(report_markdown(measure_serving.fn(load_config(sys.argv[1]).tracking,
                                             MonitorWindow.day(date.fromisoformat(sys.argv[2])))))
