"""Served requests as MLflow traces, users' ratings and corrections as assessments on them.

    python -m tunegate.traces sqlite:///mlruns/mlflow.db tunegate-serving   # print the feedback records

One shape, shared by the server that writes traces (serve/), the feedback path that attaches
assessments, and the retrain flow that reads them back (tasks/feedback.py):

- a trace's root span has the OpenAI request as inputs and the chat.completion as outputs; its tags
  name the registered model and version that answered; its client request id is the completion id
  the client got back;
- a rating is MLflow feedback named `user_rating` ("up" or "down"), source HUMAN with the user id;
- a correction is an MLflow expectation named `user_correction` (the answer the user wanted).

A (trace, user) pair with a rating or a correction is one feedback record, in the same shape as a
line of a JSONL feedback log (README "Feedback format"), so both sources train alike.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

MODEL_NAME_TAG = "tunegate.model_name"
MODEL_VERSION_TAG = "tunegate.model_version"
ARM_TAG = "tunegate.arm"  # which alias answered: champion, or candidate during a canary (serve/canary.py)
CHAMPION_ARM, CANDIDATE_ARM = "champion", "candidate"
RATING = "user_rating"
CORRECTION = "user_correction"


def answer_text(response) -> str | None:
    """The assistant's answer from a traced chat.completion (a dict, or its JSON)."""
    if isinstance(response, str):
        try:
            response = json.loads(response)
        except json.JSONDecodeError:
            return response or None
    try:
        return response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


def request_messages(request) -> list | None:
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except json.JSONDecodeError:
            return None
    return request.get("messages") if isinstance(request, dict) else None


def human_feedback(trace, *names: str):
    """The trace's current (valid: not replaced by an edit) assessments with these names, given by a person:
    source HUMAN, not an LLM judge's or a script's."""
    for a in trace.info.assessments or []:
        if a.name in names and a.valid and a.source is not None and a.source.source_type == "HUMAN":
            yield a


def rater_votes(trace) -> dict[str, str]:
    """One rating per rater on this trace: rater id -> "up" | "down", the newest when a rater has several.

    Raters, not ratings: the server refuses a second vote of one user, but ratings logged around it must not
    count twice either."""
    votes: dict[str, tuple[int, str]] = {}
    for a in human_feedback(trace, RATING):
        rater = a.source.source_id or a.assessment_id  # no id: each rating is its own rater
        if rater not in votes or a.create_time_ms >= votes[rater][0]:
            votes[rater] = (a.create_time_ms, a.feedback.value)
    return {rater: value for rater, (_, value) in votes.items()}


def arm_of(trace) -> str:
    """The arm that answered; traces from before canaries were all the champion's."""
    return trace.info.tags.get(ARM_TAG, CHAMPION_ARM)


def served_traces(experiment_id: str, start_ms: int, end_ms: int) -> list:
    """The served requests that started in [start_ms, end_ms), with their assessments (no spans)."""
    import mlflow

    return mlflow.search_traces(locations=[experiment_id], return_type="list", include_spans=False,
                                filter_string=f"trace.timestamp_ms >= {start_ms} AND trace.timestamp_ms < {end_ms}")


def latest_human_feedback(traces, name: str) -> dict[tuple[str, str], tuple]:
    """Per (trace id, person): their latest HUMAN feedback of this name and its trace. MLflow marks an edited
    assessment invalid and keeps the new one; a person who gave it twice counts once, with the latest."""
    latest: dict[tuple[str, str], tuple] = {}
    for trace in traces:
        for a in human_feedback(trace, name):
            if a.feedback is None:  # an expectation of that name is not feedback
                continue
            key = (trace.info.trace_id, a.source.source_id)
            if key not in latest or a.create_time_ms >= latest[key][0].create_time_ms:
                latest[key] = (a, trace)
    return latest


def human_assessments(trace, after_ms: int | None, done_at_edge: set[str], until_ms: int | None):
    """The trace's HUMAN ratings and corrections created after `after_ms` (ids in done_at_edge, created at
    exactly after_ms, were read before) and not after `until_ms`."""
    for a in human_feedback(trace, RATING, CORRECTION):
        created = a.create_time_ms
        if after_ms is not None and (created < after_ms or (created == after_ms and a.assessment_id in done_at_edge)):
            continue
        if until_ms is not None and created > until_ms:
            continue
        yield a


def trace_records(trace, after_ms: int | None, done_at_edge: set[str], until_ms: int | None = None) -> list[dict]:
    """Feedback records from one trace: one per user with a new rating or correction on it.

    A correction without a rating counts as a downvote: the user wanted another answer.
    """
    by_user: dict[str, dict] = {}
    for a in human_assessments(trace, after_ms, done_at_edge, until_ms):
        entry = by_user.setdefault(a.source.source_id, {"ids": [], "created": 0})
        entry["ids"].append(a.assessment_id)
        entry["created"] = max(entry["created"], a.create_time_ms)
        if a.name == RATING:
            entry["rating"] = a.feedback.value
        else:
            entry["correction"] = a.expectation.value
    if not by_user:
        return []
    messages, answer = request_messages(trace.data.request), answer_text(trace.data.response)
    records = []
    for user, entry in sorted(by_user.items()):
        moment = datetime.fromtimestamp(entry["created"] / 1000, tz=timezone.utc)
        records.append({
            "id": f"{trace.info.trace_id}/{user}",
            "timestamp": moment.isoformat(),
            "model_version": trace.info.tags.get(MODEL_VERSION_TAG),
            "conversation": messages,
            "answer": answer,
            "rating": entry.get("rating", "down" if entry.get("correction") else None),
            **({"correction": entry["correction"]} if entry.get("correction") else {}),
            "trace_id": trace.info.trace_id,
            "assessment_ids": entry["ids"],
            "assessed_ms": entry["created"],
        })
    return records


if __name__ == "__main__":
    import mlflow

    mlflow.set_tracking_uri(sys.argv[1])
    experiment = mlflow.get_experiment_by_name(sys.argv[2])
    for t in mlflow.search_traces(locations=[experiment.experiment_id], return_type="list"):
        for record in trace_records(t, None, set()):
            print(json.dumps(record, ensure_ascii=False))
