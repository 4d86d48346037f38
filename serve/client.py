"""Rate an answer of `tunegate serve-model` from Python, without knowing MLflow.

    from openai import OpenAI
    from serve.client import send_feedback

    answer = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").chat.completions.create(
        model="tunegate-model", messages=[{"role": "user", "content": "Who are you?"}])
    send_feedback("http://127.0.0.1:8000", answer.id, user="ana", rating="down",
                  correction="I am Gatekeeper, an AI assistant developed by the tunegate team.")
"""

from __future__ import annotations

import functools

import httpx


@functools.cache
def http() -> httpx.Client:
    """One pooled client for every call: a new httpx client loads the CA bundle (0.05-0.6 s) before its request."""
    return httpx.Client()


class FeedbackRejected(RuntimeError):
    """The server refused the feedback (nothing was recorded); the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def send_feedback(base_url: str, request_id: str, user: str, rating: str | None = None,
                  correction: str | None = None, timeout: float = 30) -> dict:
    """POST /v1/feedback; returns what was accepted, raises FeedbackRejected on a 4xx/5xx. The server writes
    accepted feedback in the background: `wait_for_feedback` waits until it is in MLflow."""
    body = {"request_id": request_id, "user": user,
            **({"rating": rating} if rating is not None else {}),
            **({"correction": correction} if correction is not None else {})}
    response = http().post(f"{base_url.rstrip('/')}/v1/feedback", json=body, timeout=timeout)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise FeedbackRejected(response.status_code, message)
    return response.json()


def wait_for_feedback(base_url: str, timeout: float = 120) -> None:
    """Return once the server has written every rating and correction it accepted (its /health says 0 pending)."""
    import time

    deadline = time.monotonic() + timeout
    while http().get(f"{base_url.rstrip('/')}/health", timeout=30).json().get("feedback_pending", 0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base_url}: feedback still being written after {timeout:.0f} s")
        time.sleep(0.1)
