"""Every served request as an MLflow trace; users' ratings and corrections as assessments on it.

The trace (experiment `<tracking.experiment>-serving`) holds the request messages and the answer,
the registered model name and version that answered (tags), token counts (MLflow's token usage) and
its latency (the span's duration). Its id is the request id the client gets back: the completion's
`id` is `chatcmpl-<trace hex>` and the `X-Request-Id` header carries it too, so feedback needs no
lookup table. Shapes and names: tunegate/traces.py, which the retrain flow reads back.

With `serve.redact_pii` (default on) message and answer text pass the data checks' PII detector
before they are logged: an email becomes `<EMAIL>`, a card number `<CREDIT_CARD>`, and so on; only
the placeholders are kept. Traces are exported in the background (MLflow's async logging), so a
request does not wait for the store; the feedback path flushes before it looks a trace up.
"""

from __future__ import annotations

import logging

from tunegate.config import ServeConfig, TrackingConfig
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


class RequestTracer:
    """Opens a trace per request and closes it with the answer; records feedback on traces."""

    def __init__(self, tracking: TrackingConfig, cfg: ServeConfig):
        self.cfg = cfg
        self.experiment_id = None
        if cfg.tracing:
            from tunegate.registry import serving_experiment

            _, self.experiment_id = serving_experiment(tracking)

    def text(self, value: str) -> str:
        if not self.cfg.redact_pii:
            return value
        from data_checks.pii import redact

        return redact(value)

    def start(self, served_name: str, loaded, messages: list[dict], params: dict):
        """A live span for one request, or None with tracing off."""
        if not self.cfg.tracing:
            return None
        import mlflow

        inputs = {"model": served_name, "messages": [{**m, "content": self.text(m["content"])} for m in messages],
                  **{k: v for k, v in params.items() if v is not None}}
        return mlflow.start_span_no_context(
            name="chat.completions", span_type="CHAT_MODEL", inputs=inputs, experiment_id=self.experiment_id,
            tags={MODEL_NAME_TAG: loaded.name, MODEL_VERSION_TAG: loaded.version})

    def finish(self, span, body: dict) -> None:
        if span is None:
            return
        from mlflow.tracing.constant import SpanAttributeKey

        usage = body["usage"]
        span.set_attribute(SpanAttributeKey.CHAT_USAGE, {"input_tokens": usage["prompt_tokens"],
                                                         "output_tokens": usage["completion_tokens"],
                                                         "total_tokens": usage["total_tokens"]})
        answer = body["choices"][0]["message"]
        span.end(outputs={**body, "choices": [{**body["choices"][0],
                                               "message": {**answer, "content": self.text(answer["content"])}}]})

    def fail(self, span, err: BaseException) -> None:
        if span is not None:
            span.set_status("ERROR")
            span.end(outputs={"error": type(err).__name__})

    def record_feedback(self, request: str, user: str, rating: str | None, correction: str | None) -> dict:
        """A user's rating (MLflow feedback) and correction (expectation) on the request's trace.

        One rating and one correction per user and request: a second of either is refused (409), so a
        user's vote counts once; another user's rating on the same request counts on its own.
        """
        import mlflow
        from mlflow.entities import AssessmentSource
        from mlflow.exceptions import MlflowException

        if not self.cfg.tracing:
            raise FeedbackRefused(404, "this server runs without tracing (serve.tracing: false): no request to rate")
        trace_id = trace_id_of(request)
        if trace_id is None:
            raise FeedbackRefused(404, f"unknown request id {request!r}: ids look like '{PREFIX}' + 32 hex digits")
        mlflow.flush_trace_async_logging()
        try:
            trace = mlflow.get_trace(trace_id)
        except MlflowException:
            trace = None
        if trace is None or trace.info.experiment_id != self.experiment_id:
            raise FeedbackRefused(404, f"unknown request id {request!r}: no request of this server has it")
        given = {a.name for a in trace.info.assessments or []
                 if a.source is not None and a.source.source_id == user and a.valid}
        for name, value, what in ((RATING, rating, "a rating"), (CORRECTION, correction, "a correction")):
            if value is not None and name in given:
                raise FeedbackRefused(409, f"user {user!r} already gave {what} for request {request!r}; "
                                           "each user rates and corrects a request once")
        source = AssessmentSource(source_type="HUMAN", source_id=user)
        recorded = {}
        if rating is not None:
            recorded["rating"] = mlflow.log_feedback(trace_id=trace_id, name=RATING, value=rating,
                                                     source=source).assessment_id
        if correction is not None:
            recorded["correction"] = mlflow.log_expectation(trace_id=trace_id, name=CORRECTION,
                                                            value=self.text(correction), source=source).assessment_id
        log.info("feedback on %s version %s: %s", trace.info.tags.get(MODEL_NAME_TAG),
                 trace.info.tags.get(MODEL_VERSION_TAG), ", ".join(recorded))
        return {"request_id": request, "trace_id": trace_id, "recorded": recorded}
