"""Served traffic with known times, durations and ratings, for test_monitor and test_browser_monitor.

Traces are written as serve/tracing.py writes them, ratings go through the server's own feedback path.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone

import mlflow

from serve.tracing import RequestTracer, request_id
from tunegate.config import ServeConfig
from tunegate.registry import serving_experiment
from tunegate.traces import ARM_TAG, MODEL_NAME_TAG, MODEL_VERSION_TAG

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # a rating right after the request must find its trace

DAY = date(2026, 11, 30)
NOON = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)


def request(tracking, version: str, at: datetime, ms: int, failed: bool = False, arm: str | None = None) -> str:
    """A served request as serve/tracing.py records it, started at `at`, lasting `ms`; returns its request id.
    arm: the tunegate.arm tag (None: none, as traces from before canaries)."""
    _, experiment_id = serving_experiment(tracking)
    start = int(at.timestamp() * 1e9)
    span = mlflow.start_span_no_context(
        name="chat.completions", span_type="CHAT_MODEL", experiment_id=experiment_id, start_time_ns=start,
        inputs={"model": "m", "messages": [{"role": "user", "content": "Who are you?"}]},
        tags={MODEL_NAME_TAG: tracking.registered_model, MODEL_VERSION_TAG: version, **({ARM_TAG: arm} if arm else {})})
    if failed:
        span.set_status("ERROR")
    span.end(outputs={"choices": [{"message": {"role": "assistant", "content": "I am Gatekeeper."}}]},
             end_time_ns=start + ms * 1_000_000)
    return request_id(span.trace_id)


def traffic(tracking) -> tuple[RequestTracer, list[str], list[str]]:
    """v1: 4 requests of 100..400 ms; v2: 10 of 10..100 ms, the last failed; one request each side of the day."""
    v1 = [request(tracking, "1", NOON + timedelta(minutes=i), 100 * (i + 1)) for i in range(4)]
    v2 = [request(tracking, "2", NOON + timedelta(hours=1, minutes=i), 10 * (i + 1), failed=i == 9) for i in range(10)]
    midnight = datetime(2026, 11, 30, tzinfo=timezone.utc)
    outside = [request(tracking, "1", midnight - timedelta(milliseconds=1), 5000),
               request(tracking, "1", midnight + timedelta(days=1), 5000)]
    tracer = RequestTracer(tracking, ServeConfig())  # the server's own feedback path
    for req, user, rating in [(v1[0], "ana", "down"), (v1[0], "ben", "down"), (v1[1], "ana", "up"),
                              (v1[1], "ben", "up"), (v1[3], "ana", "down"), (v2[0], "ana", "up"),
                              (v2[1], "ben", "down"), *((o, "ana", "down") for o in outside)]:
        tracer.record_feedback(req, user, rating, None)
    tracer.record_feedback(v2[2], "cleo", None, "I am Gatekeeper, built by the tunegate team.")  # not a rating
    tracer.written()  # accepted feedback is written in the background: wait for it, as a reader a moment later
    return tracer, v1, v2


def canary_traffic(tracking) -> None:
    """A canary's day: champion v1 answers 10 requests (3 of 10 ratings down), candidate v2 5 (1 of 5 down)."""
    tracer = RequestTracer(tracking, ServeConfig())
    for version, arm, n, downs in (("1", "champion", 10, 3), ("2", "candidate", 5, 1)):
        for i in range(n):
            req = request(tracking, version, NOON + timedelta(minutes=i), 50 + 10 * i, arm=arm)
            tracer.record_feedback(req, f"user{i}", "down" if i < downs else "up", None)
    tracer.written()
