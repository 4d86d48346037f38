"""Every served request as an MLflow trace; users' ratings and corrections as assessments on it.

The trace (experiment `<tracking.experiment>-serving`) holds the request messages and the answer,
the registered model name and version that answered and its arm (tags: `champion`, or `candidate`
during a canary), token counts (MLflow's token usage) and its latency (the span's duration). Its id
is the request id the client gets back: the completion's `id` is `chatcmpl-<trace hex>` and the
`X-Request-Id` header carries it too, so feedback needs no lookup table. Shapes and names: tunegate/traces.py, which the retrain flow reads back.

With `serve.redact_pii` (default on) message and answer text pass the data checks' PII detector
before they are logged: an email becomes `<EMAIL>`, a card number `<CREDIT_CARD>`, and so on; only
the placeholders are kept. Traces are exported in the background (MLflow's async logging), so a
request does not wait for the store; feedback is checked in the request and written in the
background too (serve/feedback.py).
"""

from __future__ import annotations

from serve.feedback import FeedbackRefused, FeedbackWriter, request_id, trace_id_of  # noqa: F401 (the server's API)
from tunegate.config import ServeConfig, TrackingConfig
from tunegate.traces import ARM_TAG, CHAMPION_ARM, MODEL_NAME_TAG, MODEL_VERSION_TAG


class RequestTracer:
    """Opens a trace per request and closes it with the answer; records feedback on traces."""

    def __init__(self, tracking: TrackingConfig, cfg: ServeConfig):
        self.cfg = cfg
        self.experiment_id, self.feedback = None, None
        if cfg.tracing:
            from tunegate.registry import serving_experiment

            _, self.experiment_id = serving_experiment(tracking)
            self.feedback = FeedbackWriter(self.experiment_id)

    def text(self, value: str) -> str:
        if not self.cfg.redact_pii:
            return value
        from data_checks.pii import redact

        return redact(value)

    def start(self, served_name: str, loaded, messages: list[dict], params: dict, arm: str = CHAMPION_ARM):
        """A live span for one request, or None with tracing off; `arm` names the alias that answers it."""
        if not self.cfg.tracing:
            return None
        import mlflow

        inputs = {"model": served_name, "messages": [{**m, "content": self.text(m["content"])} for m in messages],
                  **{k: v for k, v in params.items() if v is not None}}
        span = mlflow.start_span_no_context(
            name="chat.completions", span_type="CHAT_MODEL", inputs=inputs, experiment_id=self.experiment_id,
            tags={MODEL_NAME_TAG: loaded.name, MODEL_VERSION_TAG: loaded.version, ARM_TAG: arm})
        self.feedback.opened(span.trace_id)
        return span

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
        """A user's rating (MLflow feedback) and correction (expectation) on the request's trace, checked now and
        written in the background (serve/feedback.py). One rating and one correction per user and request: a
        second of either is refused (409), so a user's vote counts once; another user's counts on its own."""
        if self.feedback is None:
            raise FeedbackRefused(404, "this server runs without tracing (serve.tracing: false): no request to rate")
        return self.feedback.accept(request, user, rating, None if correction is None else self.text(correction))

    def written(self) -> None:
        """Return once every accepted rating and correction is in the store."""
        if self.feedback is not None:
            self.feedback.queue.join()

    def close(self) -> None:
        """Write the feedback still queued (server shutdown)."""
        if self.feedback is not None:
            self.feedback.close()
