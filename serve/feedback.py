"""Users' ratings and corrections: checked and accepted in the request, written to MLflow in the background.

    writer = FeedbackWriter(experiment_id)
    writer.opened(trace_id)                                  # serve/tracing.py, for every trace it starts
    writer.accept("chatcmpl-…", "ana", "down", "I am Gatekeeper.")   # 404 / 409 / 503 as FeedbackRefused
    writer.close()                                           # on shutdown: everything accepted is written

A rating is MLflow feedback and a correction an MLflow expectation on the request's trace
(tunegate/traces.py). Writing one through MLflow's sqlite store costs 10-100 ms of ORM work and a
commit, and 16 raters at once queued behind each other for seconds. So a request only checks what
can be wrong with it, against what this server knows: an unknown request id (404: not a trace this
server opened, nor one in the store) and a second rating or correction by the same user (409).
Then the write is queued and the request answered. One thread writes the queue in order; before
each write it reads the trace's assessments from the store again, so a vote given through another
replica still counts once. The trace may still sit in MLflow's async export queue: the writer
flushes that only when the trace is not in the store yet. `close()` drains the queue (the server
calls it on shutdown); `pending()` is the depth /health shows; past `max_pending` queued writes the
request is refused with 503 and the client retries. A crash loses what was queued, as it loses
traces in MLflow's own async export queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from tunegate.traces import CORRECTION, MODEL_NAME_TAG, MODEL_VERSION_TAG, RATING

log = logging.getLogger(__name__)
PREFIX = "chatcmpl-"


def request_id(trace_id: str) -> str:
    return PREFIX + trace_id.removeprefix("tr-")


def trace_id_of(request_id: str) -> str | None:
    """The trace behind a request id, or None when the id is not one this server hands out."""
    hexpart = request_id.removeprefix(PREFIX)
    if not request_id.startswith(PREFIX) or len(hexpart) != 32 or any(c not in "0123456789abcdef" for c in hexpart):
        return None
    return "tr-" + hexpart


class FeedbackRefused(Exception):
    """Feedback that is not recorded; status and message for the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Vote:
    trace_id: str
    user: str
    rating: str | None
    correction: str | None


def human_given(info) -> set[tuple[str, str]]:
    """(user, assessment name) of the valid HUMAN ratings and corrections a stored trace has."""
    return {(a.source.source_id, a.name) for a in info.assessments or []
            if a.name in (RATING, CORRECTION) and a.valid and a.source is not None and a.source.source_type == "HUMAN"}


def stored_trace_info(trace_id: str):
    """The trace's info (tags, assessments) from the store, flushing the async export queue only when it is not
    there yet; None when it does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracing.client import TracingClient

    for attempt in range(2):
        try:
            return TracingClient().get_trace_info(trace_id)
        except MlflowException:
            if attempt == 0:
                mlflow.flush_trace_async_logging()
    return None


class FeedbackWriter:
    """Accepts votes after checking them, writes them to MLflow from one background thread."""

    def __init__(self, experiment_id: str, max_pending: int = 10_000, remember: int = 100_000):
        self.experiment_id, self.remember = experiment_id, remember
        # Per trace this server knows (opened, or looked up): who already rated / corrected it. Oldest first out.
        self.known: OrderedDict[str, set[tuple[str, str]]] = OrderedDict()
        self.lock = threading.Lock()
        self.queue: queue.Queue[Vote | None] = queue.Queue(maxsize=max_pending)
        self.thread = threading.Thread(target=self._work, name="feedback-writer", daemon=True)
        self.thread.start()

    def opened(self, trace_id: str) -> None:
        with self.lock:
            self.known[trace_id] = set()
            while len(self.known) > self.remember:
                self.known.popitem(last=False)

    def pending(self) -> int:
        return self.queue.unfinished_tasks

    def accept(self, request: str, user: str, rating: str | None, correction: str | None) -> dict:
        """Check one user's vote and queue its write; FeedbackRefused says why it was not taken."""
        trace_id = trace_id_of(request)
        if trace_id is None:
            raise FeedbackRefused(404, f"unknown request id {request!r}: ids look like '{PREFIX}' + 32 hex digits")
        with self.lock:
            known = trace_id in self.known
        if not known:  # not opened here (another replica, before a restart, or long ago): ask the store
            info = stored_trace_info(trace_id)
            if info is None or info.experiment_id != self.experiment_id:
                raise FeedbackRefused(404, f"unknown request id {request!r}: no request of this server has it")
            with self.lock:
                self.known.setdefault(trace_id, set()).update(human_given(info))
        wanted = [(name, what) for name, value, what in ((RATING, rating, "a rating"),
                                                         (CORRECTION, correction, "a correction")) if value is not None]
        with self.lock:  # check and claim together: two requests of one user cannot both pass
            given = self.known.setdefault(trace_id, set())
            for name, what in wanted:
                if (user, name) in given:
                    raise FeedbackRefused(409, f"user {user!r} already gave {what} for request {request!r}; "
                                               "each user rates and corrects a request once")
            given.update((user, name) for name, _ in wanted)
            try:
                self.queue.put_nowait(Vote(trace_id, user, rating, correction))
            except queue.Full:
                given.difference_update((user, name) for name, _ in wanted)
                raise FeedbackRefused(503, "too much feedback waiting to be written; retry in a moment") from None
        return {"request_id": request, "trace_id": trace_id,
                "accepted": ["rating"] * (rating is not None) + ["correction"] * (correction is not None)}

    def close(self, timeout: float = 120) -> None:
        """Write everything accepted, then stop the writer."""
        self.queue.put(None)
        self.thread.join(timeout)

    def _work(self) -> None:
        while True:
            vote = self.queue.get()
            try:
                if vote is None:
                    return
                self._write(vote)
            except Exception:  # the store unreachable for longer than the retries: say which, keep going
                log.exception("feedback on %s by one user could not be written", vote.trace_id)
            finally:
                self.queue.task_done()

    def _write(self, vote: Vote, attempts: int = 5) -> None:
        import mlflow
        from mlflow.entities import AssessmentSource

        for attempt in range(attempts):
            try:
                info = stored_trace_info(vote.trace_id)
                if info is None:
                    raise RuntimeError("trace not in the store")
                given = human_given(info)
                source = AssessmentSource(source_type="HUMAN", source_id=vote.user)
                if vote.rating is not None and (vote.user, RATING) not in given:
                    mlflow.log_feedback(trace_id=vote.trace_id, name=RATING, value=vote.rating, source=source)
                if vote.correction is not None and (vote.user, CORRECTION) not in given:
                    mlflow.log_expectation(trace_id=vote.trace_id, name=CORRECTION, value=vote.correction,
                                           source=source)
                log.info("feedback on %s version %s written", info.tags.get(MODEL_NAME_TAG),
                         info.tags.get(MODEL_VERSION_TAG))
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
