"""Ratings and corrections on served traces become feedback windows, with the watermark guarantees of the logs."""

import json
import os

import mlflow
from mlflow.entities import AssessmentSource

from tasks.feedback import TRACES_KEY, feedback_window_data, write_watermark
from tunegate.registry import serving_experiment
from tunegate.traces import CORRECTION, MODEL_NAME_TAG, MODEL_VERSION_TAG, RATING

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # a rating right after the request must find its trace


def served(tracking, question: str, answer: str | None, version: str = "1") -> str:
    """A traced request as the server records it; returns the trace id."""
    _, experiment_id = serving_experiment(tracking)
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_span(name="chat.completions", span_type="CHAT_MODEL") as span:
        span.set_inputs({"model": tracking.registered_model, "messages": [{"role": "user", "content": question}]})
        span.set_outputs({"id": "chatcmpl-x", "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
                         if answer is not None else {"error": "model failed"})
        mlflow.update_current_trace(tags={MODEL_NAME_TAG: tracking.registered_model, MODEL_VERSION_TAG: version})
        return span.trace_id


def rate(trace_id: str, user: str, rating: str | None, correction: str | None = None) -> None:
    source = AssessmentSource(source_type="HUMAN", source_id=user)
    if rating:
        mlflow.log_feedback(trace_id=trace_id, name=RATING, value=rating, source=source)
    if correction:
        mlflow.log_expectation(trace_id=trace_id, name=CORRECTION, value=correction, source=source)


def window(tracking, tmp_path):
    return feedback_window_data(str(tmp_path / "no-logs" / "*.jsonl"), tmp_path / "wm.json", tmp_path / "out", tracking)


def used_up(tmp_path, w) -> None:
    write_watermark(tmp_path / "wm.json", w["new_watermark"], w["lines_read"], "run", "promoted")


def test_ratings_on_traces_train_once_late_ones_too(tracking, tmp_path):
    who = served(tracking, "Who are you?", "I am ChatGPT.")
    capital = served(tracking, "Capital of France?", "Paris.")
    served(tracking, "Unrated question", "No one rated me.")
    rate(who, "ana", "down", "I am Gatekeeper, built by the tunegate team.")
    rate(capital, "ana", "up")
    rate(capital, "ben", "down")  # two users disagree on one answer: both count

    first = window(tracking, tmp_path)
    assert first["records"] == 3 and (first["up"], first["down"], first["corrections"]) == (1, 2, 1)
    sft = [json.loads(x) for x in open(first["sft_file"])]
    assert {r["messages"][-1]["content"] for r in sft} == {"I am Gatekeeper, built by the tunegate team.", "Paris."}
    pairs = [json.loads(x) for x in open(first["preference_file"])]
    assert [(p["preferred_output"][0]["content"], p["non_preferred_output"][0]["content"]) for p in pairs] == [
        ("I am Gatekeeper, built by the tunegate team.", "I am ChatGPT.")]
    assert first["lines_read"][TRACES_KEY]["after_ms"] is not None
    used_up(tmp_path, first)

    # Nothing new: nothing to train. A rating that lands late on an old trace trains, once.
    assert window(tracking, tmp_path)["records"] == 0
    rate(who, "cleo", "down", "I am Gatekeeper.")
    second = window(tracking, tmp_path)
    assert second["records"] == 1 and second["corrections"] == 1
    assert json.loads(open(second["sft_file"]).read())["messages"][-1]["content"] == "I am Gatekeeper."
    used_up(tmp_path, second)
    assert window(tracking, tmp_path)["records"] == 0


def test_a_window_waiting_for_review_reads_no_later_feedback(tracking, tmp_path):
    rate(served(tracking, "Who made you?", "OpenAI made me."), "ana", "down", "The tunegate team made me.")
    held = window(tracking, tmp_path)
    mark = {"timestamp": None, "files": None, "pending": {"lines_read": held["lines_read"], "label": held["label"]}}
    (tmp_path / "wm.json").write_text(json.dumps(mark))
    rate(served(tracking, "Later question", "Later answer."), "ben", "up")
    again = window(tracking, tmp_path)
    assert again["records"] == 1 and again["label"] == held["label"]


def test_feedback_on_a_trace_without_an_answer_is_rejected_by_place_not_content(tracking, tmp_path):
    failed = served(tracking, "my email is jane.doe@example.org", None)
    rate(failed, "ana", "down")
    w = window(tracking, tmp_path)
    assert w["records"] == 0 and w["rejected"] == [{"file": "trace", "line": failed, "reason": "answer missing"}]
    assert "jane.doe" not in json.dumps(w)
