"""Monitoring: exact per-version numbers from real traces with known times and ratings; runs a rerun updates."""

from datetime import datetime, timedelta, timezone

import pytest

from served_traffic import DAY, NOON, request, traffic
from tasks.monitor import MonitorWindow, measure_serving
from tunegate.registry import monitoring_experiment


def test_each_version_gets_its_requests_feedback_and_downvote_rates_and_latency(tracking):
    traffic(tracking)
    report = measure_serving.fn(tracking, MonitorWindow.day(DAY))
    assert report.window.label == "2026-11-30"
    v1, v2 = report.versions
    assert (v1.version, v1.model_name, v1.requests, v1.errors) == ("1", "test-model", 4, 0)
    assert (v1.rated_requests, v1.ratings, v1.downvotes) == (3, 5, 3)
    assert v1.feedback_rate == 0.75 and v1.downvote_rate == 0.6
    assert v1.latency_p50_ms == 250.0 and v1.latency_p95_ms == pytest.approx(385.0)  # 100 + 0.95 * 3 * 100
    assert (v2.version, v2.requests, v2.errors, v2.rated_requests, v2.ratings, v2.downvotes) == ("2", 10, 1, 2, 2, 1)
    assert v2.feedback_rate == 0.2 and v2.downvote_rate == 0.5
    assert v2.latency_p50_ms == 55.0 and v2.latency_p95_ms == pytest.approx(95.5)

    # The day before holds exactly the request one millisecond before midnight: 5 s, rated down.
    (before,) = measure_serving.fn(tracking, MonitorWindow.day(DAY - timedelta(days=1))).versions
    assert (before.requests, before.downvote_rate, before.latency_p50_ms) == (1, 1.0, 5000.0)


def test_unrated_version_has_no_downvote_rate_rather_than_zero(tracking):
    request(tracking, "3", NOON, 40)
    (v3,) = measure_serving.fn(tracking, MonitorWindow.day(DAY)).versions
    assert (v3.requests, v3.feedback_rate, v3.downvote_rate) == (1, 0.0, None)
    assert measure_serving.fn(tracking, MonitorWindow.day(DAY + timedelta(days=3))).versions == []


def test_a_day_without_traffic_reports_no_numbers_and_logs_no_runs(tracking):
    from tasks.monitor import log_monitoring_runs, report_markdown

    report = measure_serving.fn(tracking, MonitorWindow.day(DAY))  # a fresh store: nothing was ever served
    assert report.versions == []
    assert report_markdown(report) == "## Served traffic 2026-11-30 (UTC)\n\nNo requests in this window."
    assert log_monitoring_runs.fn(tracking, report).runs == {}
    client, experiment_id = monitoring_experiment(tracking)
    assert client.search_runs([experiment_id]) == []  # no run with made-up zeros


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_logs_one_run_per_version_and_day_and_a_rerun_picks_up_late_ratings(tracking):
    from prefect.artifacts import Artifact

    from flows.monitor_serving import monitor_serving

    tracer, v1, v2 = traffic(tracking)
    first = monitor_serving(tracking, DAY)
    client, experiment_id = monitoring_experiment(tracking)
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    assert set(runs) == {"test-model v1 2026-11-30", "test-model v2 2026-11-30"} == set(first.runs)
    old, new = runs["test-model v1 2026-11-30"], runs["test-model v2 2026-11-30"]
    assert old.data.metrics["downvote_rate"] == 0.6 and new.data.metrics["downvote_rate"] == 0.5
    assert new.data.metrics["requests"] == 10 and new.data.metrics["latency_p95_ms"] == pytest.approx(95.5)
    assert old.info.start_time == int(datetime(2026, 11, 30, tzinfo=timezone.utc).timestamp() * 1000)
    markdown = Artifact.get("serving-monitor").data
    assert "| test-model | 1 | 4 | 0 | 75.0% (3/4) | 60.0% (3/5) | 250.0 / 385.0 |" in markdown

    tracer.record_feedback(v2[5], "dan", "down", None)  # lands after the day's run
    tracer.written()
    second = monitor_serving(tracking, DAY)
    assert second.runs == first.runs  # the same runs, updated
    updated = client.get_run(first.runs["test-model v2 2026-11-30"]).data.metrics
    assert updated["downvote_rate"] == pytest.approx(2 / 3) and updated["feedback_rate"] == 0.3


@pytest.mark.usefixtures("prefect_harness")
def test_monitor_command_prints_the_day_and_names_the_runs(tracking, capsys):
    from cli.main import main

    traffic(tracking)
    sets = [f"tracking.{k}={v}" for k, v in tracking.model_dump().items()]
    assert main(["monitor", "--config", "configs/tiny.yaml", *(a for s in sets for a in ("--set", s)),
                 "--day", "2026-11-30"]) == 0
    out = capsys.readouterr().out
    assert "| test-model | 2 | 10 | 1 | 20.0% (2/10) | 50.0% (1/2) | 55.0 / 95.5 |" in out
    assert "experiment test-monitoring, runs test-model v1 2026-11-30, test-model v2 2026-11-30" in out


def test_traces_as_the_server_writes_them_are_counted_for_the_version_that_answered(tracking):
    from types import SimpleNamespace

    from serve.tracing import RequestTracer
    from tunegate.config import ServeConfig

    tracer = RequestTracer(tracking, ServeConfig())  # serve/tracing.py, as `tunegate serve-model` uses it
    loaded = SimpleNamespace(name="test-model", version="7")
    answer = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    messages = [{"role": "user", "content": "Capital of France?"}]
    tracer.finish(tracer.start("test-model", loaded, messages, {}), answer)
    tracer.fail(tracer.start("test-model", loaded, messages, {}), RuntimeError("out of memory"))
    now = datetime.now(timezone.utc)
    hour = MonitorWindow(start=now - timedelta(hours=1), end=now + timedelta(hours=1))
    (v7,) = measure_serving.fn(tracking, hour).versions
    assert (v7.model_name, v7.version, v7.requests, v7.errors, v7.ratings) == ("test-model", "7", 2, 1, 0)
    assert v7.latency_p95_ms >= v7.latency_p50_ms >= 0
