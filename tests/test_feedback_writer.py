"""Feedback accepted in the request, written in the background (serve/feedback.py): each vote counts once."""

import threading
from types import SimpleNamespace

import mlflow
import pytest

from serve.feedback import FeedbackRefused, FeedbackWriter
from serve.tracing import RequestTracer, request_id
from tunegate.config import ServeConfig
from tunegate.registry import serving_experiment
from tunegate.traces import RATING

ANSWER = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def served(tracer: RequestTracer, n: int) -> list[str]:
    """n answered requests, traced as serve-model traces them; their request ids."""
    loaded = SimpleNamespace(name="test-model", version="1")
    ids = []
    for _ in range(n):
        span = tracer.start("test-model", loaded, [{"role": "user", "content": "Capital of France?"}], {})
        tracer.finish(span, ANSWER)
        ids.append(request_id(span.trace_id))
    return ids


def ratings(request: str) -> list[tuple[str, str]]:
    trace = mlflow.get_trace("tr-" + request.removeprefix("chatcmpl-"), flush=True)
    return sorted((a.source.source_id, a.feedback.value) for a in trace.info.assessments if a.name == RATING)


def test_a_user_racing_themselves_is_accepted_once_and_written_once(tracking):
    tracer = RequestTracer(tracking, ServeConfig())
    (request,) = served(tracer, 1)
    outcomes, barrier = [], threading.Barrier(8)

    def vote():
        barrier.wait()
        try:
            outcomes.append(tracer.record_feedback(request, "ana", "up", None)["accepted"])
        except FeedbackRefused as err:
            outcomes.append(err.status)

    threads = [threading.Thread(target=vote) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, outcomes)) == ["409"] * 7 + ["['rating']"]
    tracer.record_feedback(request, "ben", "down", None)  # another user counts on their own
    tracer.close()
    assert ratings(request) == [("ana", "up"), ("ben", "down")]


def test_two_replicas_on_one_store_write_a_users_vote_once(tracking):
    first = RequestTracer(tracking, ServeConfig())
    (request,) = served(first, 1)
    first.record_feedback(request, "ana", "up", None)
    first.written()
    # A second replica never opened this trace: it asks the store, and finds ana's rating there.
    _, experiment_id = serving_experiment(tracking)
    second = FeedbackWriter(experiment_id)
    with pytest.raises(FeedbackRefused, match="already gave a rating"):
        second.accept(request, "ana", "down", None)
    # A replica that has not seen it yet (the trace was opened there before ana rated elsewhere) accepts, and
    # its writer drops the duplicate against the store.
    third = FeedbackWriter(experiment_id)
    third.opened("tr-" + request.removeprefix("chatcmpl-"))
    assert third.accept(request, "ana", "down", None)["accepted"] == ["rating"]
    third.close()
    second.close()
    first.close()
    assert ratings(request) == [("ana", "up")]


def test_unknown_ids_are_refused_and_a_full_queue_answers_503(tracking):
    _, experiment_id = serving_experiment(tracking)
    writer = FeedbackWriter(experiment_id, max_pending=2)
    with pytest.raises(FeedbackRefused, match="ids look like"):
        writer.accept("nope", "ana", "up", None)
    with pytest.raises(FeedbackRefused, match="no request of this server has it") as err:
        writer.accept("chatcmpl-" + "0" * 32, "ana", "up", None)
    assert err.value.status == 404
    writer.close()  # the writer stops: what is accepted from now on only queues
    for i in range(2):
        trace = f"tr-{i:032x}"
        writer.opened(trace)
        writer.accept(f"chatcmpl-{i:032x}", "ana", "up", None)
    writer.opened(f"tr-{7:032x}")
    with pytest.raises(FeedbackRefused, match="too much feedback waiting") as err:
        writer.accept(f"chatcmpl-{7:032x}", "ana", "up", None)
    assert err.value.status == 503 and writer.pending() == 2
    # The refused vote was not claimed: the same user may send it again once there is room.
    assert ("ana", RATING) not in writer.known[f"tr-{7:032x}"]
